import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../server/config/load.ts';

const images = 'images:\n  lab:\n    source: docker:lab:latest\n';

describe('server.api', () => {
  it('defaults to closed (no tokens, not public); tokens and public can be set; apiToken stays accepted', () => {
    expect(parseConfig(images, '/virtual/netboot.yaml').server.api).toEqual({ public: false });
    const config = parseConfig(
      `server:\n  apiToken: old-admin-token-0001\n  api:\n    readToken: read-token-00000001\n    adminToken: admin-token-0000001\n    public: true\n${images}`,
      '/virtual/netboot.yaml',
    );
    expect(config.server.api).toEqual({ readToken: 'read-token-00000001', adminToken: 'admin-token-0000001', public: true });
    expect(config.server.apiToken).toBe('old-admin-token-0001');
  });

  it('refuses short tokens and unknown keys at their position', () => {
    const issues = (yaml: string) => {
      try {
        parseConfig(yaml, '/virtual/netboot.yaml');
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as ConfigError).message;
      }
      throw new Error('config was accepted');
    };
    expect(issues(`server:\n  api:\n    readToken: short\n${images}`)).toMatch(/server\.api\.readToken.*at least 16 characters/);
    expect(issues(`server:\n  api:\n    adminToken: short\n${images}`)).toMatch(/server\.api\.adminToken.*at least 16 characters/);
    expect(issues(`server:\n  api:\n    writeToken: whatever-whatever\n${images}`)).toMatch(/server\.api.*writeToken/);
  });
});
