import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Tests that boot VMs or build images take minutes under TCG; each sets its own timeout.
    testTimeout: 30_000,
    hookTimeout: 600_000,
    // Network namespaces, dockerd and QEMU are machine-wide: run test files one at a time.
    fileParallelism: false,
    reporters: ['default'],
    // One temp root per run (TMPDIR), removed when the run passes.
    globalSetup: ['test/setup/temp-dir.ts'],
  },
});
