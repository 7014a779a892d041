/** IPv4 dotted quads <-> unsigned 32-bit integers (pool ranges, netmasks). */
export function ipToInt(ip: string): number {
  // By hand, without split/map: DHCP and the neighbour lookups call this on every packet and request.
  let n = 0;
  let part = 0;
  for (let i = 0; i < ip.length; i++) {
    const code = ip.charCodeAt(i);
    if (code === 46 /* . */) {
      n = n * 256 + part;
      part = 0;
    } else part = part * 10 + (code - 48);
  }
  return (n * 256 + part) >>> 0;
}

export function intToIp(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}
