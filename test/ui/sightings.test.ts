import { describe, expect, it } from 'vitest';
import { DhcpSightings } from '../../server/boot/dhcp-sightings.ts';

describe('DhcpSightings info (the inbox)', () => {
  it('keeps what the last packets said, merged, within the same bound as the sightings', () => {
    const sightings = new DhcpSightings(2, () => 1000);
    sightings.note('52:54:00:60:40:01', { arch: 7, vendorClass: 'PXEClient:Arch:00007:UNDI:003016', address: null });
    sightings.note('52:54:00:60:40:01', { arch: null, address: '10.88.60.20' });
    expect(sightings.info('52:54:00:60:40:01')).toEqual({ arch: 7, vendorClass: 'PXEClient:Arch:00007:UNDI:003016', address: '10.88.60.20' });
    sightings.note('52:54:00:60:40:02');
    sightings.note('52:54:00:60:40:03', { arch: 0 });
    expect(sightings.info('52:54:00:60:40:01')).toBeUndefined();
    expect(sightings.ageMs('52:54:00:60:40:01')).toBeUndefined();
    expect(sightings.info('52:54:00:60:40:03')).toEqual({ arch: 0 });
  });
});
