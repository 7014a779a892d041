import { describe, expect, it } from 'vitest';
import { intToIp, ipToInt } from '../../server/config/ipv4.ts';

describe('ipv4', () => {
  it('turns dotted quads into unsigned 32-bit integers and back', () => {
    expect(ipToInt('0.0.0.0')).toBe(0);
    expect(ipToInt('0.0.0.1')).toBe(1);
    expect(ipToInt('10.88.21.7')).toBe(10 * 2 ** 24 + 88 * 2 ** 16 + 21 * 2 ** 8 + 7);
    expect(ipToInt('255.255.255.255')).toBe(2 ** 32 - 1);
    expect(ipToInt('255.255.252.0')).toBe(0xfffffc00);
    for (const ip of ['192.168.1.254', '172.20.31.254', '128.0.0.0', '1.2.3.4']) expect(intToIp(ipToInt(ip))).toBe(ip);
  });
});
