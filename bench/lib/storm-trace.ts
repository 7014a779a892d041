/** An NBD read trace recorded from a real boot (bench/lib/record-nbd-trace.ts). */
export interface NbdTrace {
  imageId: string;
  recordedAt: string;
  how: string;
  /** NBD connections the machine opened (netboot-nbd reconnects open new ones). */
  connections: number;
  /** [offset, length, connection index], in the order the server received them. */
  reads: [number, number, number][];
}
