/** MAC addresses in the spellings admins paste: aa:bb:cc:dd:ee:ff, AA-BB-CC-DD-EE-FF, aabb.ccdd.eeff, aabbccddeeff. */
const HEX12 = /^[0-9a-f]{12}$/;

/** Returns the canonical lower-case colon form, or null when `text` is not a MAC. */
export function normalizeMac(text: string): string | null {
  const trimmed = text.trim().toLowerCase();
  const separated = trimmed.split(/[:-]/);
  let hex: string;
  if (separated.length === 6) {
    if (!separated.every((part) => /^[0-9a-f]{1,2}$/.test(part))) return null;
    hex = separated.map((part) => part.padStart(2, '0')).join('');
  } else {
    hex = trimmed.replace(/\./g, '');
    if (trimmed.includes('.') && !/^[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}$/.test(trimmed)) return null;
  }
  if (!HEX12.test(hex)) return null;
  return hex.match(/../g)!.join(':');
}

/** aa:bb:cc:dd:ee:ff -> aa-bb-cc-dd-ee-ff, the form used in URLs and folder names (iPXE's ${mac:hexhyp}). */
export function macToHyphens(mac: string): string {
  return mac.replace(/:/g, '-');
}

/** Hostname of a machine the config gives none (configured without one, or an unknown MAC the policy boots). */
export function defaultHostname(mac: string): string {
  return `node-${mac.replace(/[:-]/g, '')}`;
}

/** Six raw bytes -> canonical colon form. */
export function macFromBytes(bytes: Uint8Array): string {
  return Array.from(bytes.subarray(0, 6), (b) => b.toString(16).padStart(2, '0')).join(':');
}
