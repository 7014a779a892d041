import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';

/**
 * vitest globalSetup: the whole run gets one temp root (TMPDIR, inherited by the test
 * workers and every process they start), removed when the run passes. A failed run keeps
 * it, with the e2e logs and VM consoles, and says where. NETBOOT_KEEP_TEST_TMP=1 keeps it
 * anyway.
 */
export default function setup(project: TestProject): () => void {
  const root = mkdtempSync(join(tmpdir(), 'netboot-tests-'));
  // Like /tmp: daemons the tests start under other users (nginx workers) reach their dirs.
  chmodSync(root, 0o1777);
  process.env.TMPDIR = root;
  return () => {
    const state = project.vitest.state;
    const failed = state.getCountOfFailedTests() + state.getUnhandledErrors().length;
    if (failed > 0 || process.env.NETBOOT_KEEP_TEST_TMP === '1') {
      process.stderr.write(`test temp files kept in ${root}\n`);
      return;
    }
    try {
      // A child a test leaked may still be writing: retry, and never fail a passed run over its temp files.
      rmSync(root, { recursive: true, force: true, maxRetries: 3 });
    } catch (err) {
      process.stderr.write(`test temp files left in ${root}: ${(err as Error).message}\n`);
    }
  };
}
