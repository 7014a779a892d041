import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Dockerode from 'dockerode';
import { afterAll, describe, expect, it } from 'vitest';
import { imageSources } from '../../server/doctor/facts.ts';

const dir = mkdtempSync(join(tmpdir(), 'doc-facts-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('doctor: image sources (the I/O edge)', () => {
  it('reads archives without an engine and names an unreachable engine once for every docker: image', async () => {
    const archive = join(dir, 'a.tar');
    writeFileSync(archive, Buffer.alloc(2_500_000));
    const engine = new Dockerode({ socketPath: join(dir, 'no-such-docker.sock') });
    const states = await imageSources(
      [
        { name: 'a', source: `oci-archive:${archive}` },
        { name: 'b', source: `oci-archive:${join(dir, 'missing.tar')}` },
        { name: 'c', source: `oci-archive:${dir}` },
        { name: 'd', source: 'docker:netboot/demo:latest' },
        { name: 'e', source: 'docker:debian:12' },
      ],
      engine,
    );
    expect(states.get('a')).toEqual({ state: 'ok', detail: 'archive readable (2.5 MB)' });
    expect(states.get('b')).toEqual({ state: 'error', detail: `${join(dir, 'missing.tar')}: ENOENT` });
    expect(states.get('c')).toEqual({ state: 'error', detail: `${dir} is not a file` });
    const unreachable = `cannot reach the Docker engine at unix://${join(dir, 'no-such-docker.sock')} (ENOENT): is dockerd running? (DOCKER_HOST selects another engine)`;
    expect(states.get('d')).toEqual({ state: 'error', detail: unreachable });
    expect(states.get('e')).toEqual({ state: 'error', detail: unreachable });
  });
});
