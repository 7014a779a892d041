import { describe, expect, it } from 'vitest';
import { userSchema } from '../../server/config/schema.ts';
import { AccountError, formatGroup, formatPasswd, mergeAccounts, parsePasswd } from '../../server/layers/accounts.ts';
import { IMAGE_GROUP, IMAGE_GSHADOW, IMAGE_PASSWD, IMAGE_SHADOW } from '../http/fixtures.ts';

const image = { passwd: IMAGE_PASSWD, group: IMAGE_GROUP, shadow: IMAGE_SHADOW, gshadow: IMAGE_GSHADOW };
const user = (u: Record<string, unknown>) => userSchema.parse(u);

describe('mergeAccounts', () => {
  it('keeps image entries in order, adds new users with free ids >= 1000 and a private group', () => {
    const merged = mergeAccounts(image, [user({ name: 'alice', groups: ['sudo', 'docker'] })]);
    const passwd = formatPasswd(merged.passwd);
    expect(passwd.startsWith(IMAGE_PASSWD)).toBe(true);
    // 1000 is taken by "old" in the image
    expect(passwd).toContain('alice:x:1001:1001::/home/alice:/bin/bash\n');
    const group = formatGroup(merged.group);
    expect(group).toContain('sudo:x:27:alice\n');
    expect(group).toContain('alice:x:1001:\n');
    expect(group).toMatch(/^docker:x:1002:alice$/m);
    expect(merged.shadow.find((r) => r[0] === 'alice')).toEqual(['alice', '*', '', '0', '99999', '7', '', '', '']);
    expect(merged.gshadow!.find((r) => r[0] === 'sudo')).toEqual(['sudo', '*', '', 'alice']);
    expect(merged.gshadow!.find((r) => r[0] === 'docker')).toEqual(['docker', '!', '', 'alice']);
  });

  it('replaces a configured user that the image has, keeping its uid and gecos', () => {
    const merged = mergeAccounts(image, [user({ name: 'old', shell: '/bin/zsh', passwordHash: '$6$new$hash' })]);
    expect(merged.passwd.filter((e) => e.name === 'old')).toEqual([
      { name: 'old', password: 'x', uid: 1000, gid: 1000, gecos: '', home: '/home/old', shell: '/bin/zsh' },
    ]);
    expect(merged.shadow.filter((r) => r[0] === 'old')).toHaveLength(1);
    expect(merged.shadow.find((r) => r[0] === 'old')![1]).toBe('$6$new$hash');
    expect(parsePasswd(formatPasswd(merged.passwd)).map((e) => e.name)).toEqual(['root', 'daemon', 'nobody', 'old']);
  });

  it('honours explicit uid/gid and refuses a uid another image user has', () => {
    const merged = mergeAccounts(image, [user({ name: 'svc', uid: 2000, gid: 2000 })]);
    expect(merged.configured[0]).toMatchObject({ uid: 2000, gid: 2000, home: '/home/svc' });
    expect(merged.group.find((g) => g.gid === 2000)?.name).toBe('svc');
    expect(() => mergeAccounts(image, [user({ name: 'intruder', uid: 0 })])).toThrow(AccountError);
    expect(() => mergeAccounts(image, [user({ name: 'a' }), user({ name: 'a' })])).toThrow(/configured twice/);
  });
});
