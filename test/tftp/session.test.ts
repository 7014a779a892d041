import { describe, expect, it } from 'vitest';
import { parsePacket, type RequestPacket, type TftpOption, type TftpPacket } from '../../server/tftp/codec.ts';
import { negotiateOptions, ReadSession, defaultSessionLimits, type SessionAction, type SessionLimits } from '../../server/tftp/session.ts';

const limits: SessionLimits = { ...defaultSessionLimits, maxBlksize: 1468, maxWindowsize: 16, timeoutMs: 1000, maxTimeoutMs: 4000, maxRetries: 3 };

function rrq(options: Record<string, string> = {}): RequestPacket {
  return { op: 'RRQ', filename: 'f', mode: 'octet', options: Object.entries(options).map(([name, value]) => ({ name, value })) };
}

/** What the session put on the wire: packets as the client would parse them, DATA filled from `content`. */
function wire(actions: SessionAction[], content: Buffer): TftpPacket[] {
  const out: TftpPacket[] = [];
  for (const a of actions) {
    if (a.kind === 'send') {
      const p = parsePacket(a.packet);
      if (!p.ok) throw new Error('session produced an unparsable packet');
      out.push(p.packet);
    } else if (a.kind === 'send-data') {
      for (const b of a.blocks) out.push({ op: 'DATA', block: b.wire, data: content.subarray(b.offset, b.offset + b.length) });
    }
  }
  return out;
}
const dataBlocks = (packets: TftpPacket[]) => packets.flatMap((p) => (p.op === 'DATA' ? [p.block] : []));
const finish = (actions: SessionAction[]) => actions.find((a) => a.kind === 'finish');
const timer = (actions: SessionAction[]) => actions.find((a) => a.kind === 'arm-timer');
const ack = (block: number): TftpPacket => ({ op: 'ACK', block });

describe('option negotiation', () => {
  const opts = (o: Record<string, string>): TftpOption[] => Object.entries(o).map(([name, value]) => ({ name, value }));

  it('clamps blksize to the configured maximum and reports tsize', () => {
    const n = negotiateOptions(opts({ blksize: '65464', tsize: '0' }), 123456, limits);
    expect(n.blksize).toBe(1468);
    expect(n.oack).toEqual(opts({ blksize: '1468', tsize: '123456' }));
  });

  it('accepts timeout and clamps windowsize, echoing the client spelling', () => {
    const n = negotiateOptions(opts({ TIMEOUT: '3', WindowSize: '64' }), 10, limits);
    expect(n).toMatchObject({ timeoutMs: 3000, windowsize: 16 });
    expect(n.oack).toEqual(opts({ TIMEOUT: '3', WindowSize: '16' }));
  });

  it('refuses a timeout longer than the backoff cap', () => {
    expect(negotiateOptions(opts({ timeout: '5' }), 10, limits).oack).toEqual([]);
    expect(negotiateOptions(opts({ timeout: '4' }), 10, limits)).toMatchObject({ timeoutMs: 4000, oack: opts({ timeout: '4' }) });
  });

  it('leaves out unknown and out-of-range options', () => {
    const n = negotiateOptions(opts({ blksize: '7', timeout: '0', windowsize: 'x', multicast: '', tsize: '-1', foo: '1' }), 10, limits);
    expect(n).toEqual({ blksize: 512, windowsize: 1, timeoutMs: 1000, oack: [] });
  });
});

describe('ReadSession', () => {
  it('without options sends block 1 straight away, lockstep to the end, including an empty final block', () => {
    const content = Buffer.alloc(1024, 7); // exactly 2 blocks of 512 -> a third, empty block ends it
    const s = new ReadSession(rrq(), content.length, limits);
    expect(dataBlocks(wire(s.start(), content))).toEqual([1]);
    expect(dataBlocks(wire(s.receive(ack(1)), content))).toEqual([2]);
    const last = wire(s.receive(ack(2)), content);
    expect(last).toEqual([{ op: 'DATA', block: 3, data: Buffer.alloc(0) }]);
    expect(finish(s.receive(ack(3)))).toEqual({ kind: 'finish', outcome: 'complete' });
    expect(s.bytesAcked).toBe(1024);
  });

  it('with options sends an OACK and waits for ACK 0', () => {
    const content = Buffer.alloc(3000, 1);
    const s = new ReadSession(rrq({ blksize: '1468', tsize: '0' }), content.length, limits);
    const first = wire(s.start(), content);
    expect(first).toEqual([{ op: 'OACK', options: [{ name: 'blksize', value: '1468' }, { name: 'tsize', value: '3000' }] }]);
    expect(s.receive(ack(5))).toEqual([]); // not ACK 0: ignored
    const data = wire(s.receive(ack(0)), content);
    expect(data).toEqual([{ op: 'DATA', block: 1, data: content.subarray(0, 1468) }]);
  });

  it('sends whole windows and resumes right after a partial-window ACK', () => {
    const content = Buffer.alloc(512 * 40 + 100);
    for (let i = 0; i < content.length; i++) content[i] = i % 251;
    const s = new ReadSession(rrq({ windowsize: '8' }), content.length, limits);
    s.start();
    expect(dataBlocks(wire(s.receive(ack(0)), content))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    // Block 4 was lost: the client acknowledges 3; the next window starts at 4.
    const resumed = wire(s.receive(ack(3)), content);
    expect(dataBlocks(resumed)).toEqual([4, 5, 6, 7, 8, 9, 10, 11]);
    expect(resumed[0]).toEqual({ op: 'DATA', block: 4, data: content.subarray(3 * 512, 4 * 512) });
    expect(dataBlocks(wire(s.receive(ack(11)), content))).toEqual([12, 13, 14, 15, 16, 17, 18, 19]);
  });

  it('does not resend on a duplicate ACK (Sorcerer\'s Apprentice) nor on an ACK of an unsent block', () => {
    const content = Buffer.alloc(512 * 10);
    const s = new ReadSession(rrq(), content.length, limits);
    s.start();
    expect(dataBlocks(wire(s.receive(ack(1)), content))).toEqual([2]);
    expect(s.receive(ack(1))).toEqual([]);
    expect(s.receive(ack(1))).toEqual([]);
    expect(s.receive(ack(9))).toEqual([]);
    expect(dataBlocks(wire(s.receive(ack(2)), content))).toEqual([3]);
  });

  it('rolls the block number over from 65535 to 0 and keeps offsets right (> 32 MB at 512)', () => {
    const size = 512 * 65536 + 10;
    const s = new ReadSession(rrq(), size, limits);
    let actions = s.start();
    const seen: { wire: number; offset: number }[] = [];
    for (let n = 1; ; n++) {
      const send = actions.find((a) => a.kind === 'send-data');
      if (!send || send.kind !== 'send-data') throw new Error(`no DATA after ack ${n - 1}`);
      const block = send.blocks[0]!;
      if (n >= 65534) seen.push({ wire: block.wire, offset: block.offset });
      actions = s.receive(ack(block.wire));
      if (finish(actions)) break;
    }
    expect(seen).toEqual([
      { wire: 65534, offset: 65533 * 512 },
      { wire: 65535, offset: 65534 * 512 },
      { wire: 0, offset: 65535 * 512 },
      { wire: 1, offset: 65536 * 512 },
    ]);
    expect(s.bytesAcked).toBe(size);
  });

  it('maps ACKs across the rollover inside a window', () => {
    const size = 512 * 65540;
    const s = new ReadSession(rrq({ windowsize: '4' }), size, { ...limits });
    s.start();
    let actions = s.receive(ack(0));
    // Acknowledge full windows up to block 65532.
    for (let last = 4; last <= 65532; last += 4) actions = s.receive(ack(last & 0xffff));
    const window = actions.find((a) => a.kind === 'send-data');
    expect(window?.kind === 'send-data' && window.blocks.map((b) => b.wire)).toEqual([65533, 65534, 65535, 0]);
    // Partial ACK of the wrapped-around window: 65535 acknowledged, next starts at wire 0 (index 65536).
    const next = s.receive(ack(65535)).find((a) => a.kind === 'send-data');
    expect(next?.kind === 'send-data' && next.blocks.map((b) => [b.index, b.wire])).toEqual([
      [65536, 0],
      [65537, 1],
      [65538, 2],
      [65539, 3],
    ]);
  });

  it('retransmits on timeout with doubling backoff, resets on progress, gives up after the retries', () => {
    const content = Buffer.alloc(2000);
    const s = new ReadSession(rrq(), content.length, limits);
    expect(timer(s.start())).toEqual({ kind: 'arm-timer', ms: 1000 });
    let t = s.timeout();
    expect(dataBlocks(wire(t, content))).toEqual([1]);
    expect(timer(t)).toEqual({ kind: 'arm-timer', ms: 2000 });
    expect(timer(s.timeout())).toEqual({ kind: 'arm-timer', ms: 4000 });
    expect(timer(s.receive(ack(1)))).toEqual({ kind: 'arm-timer', ms: 1000 });
    s.timeout();
    s.timeout();
    t = s.timeout();
    expect(timer(t)).toEqual({ kind: 'arm-timer', ms: 4000 }); // capped
    expect(finish(s.timeout())).toMatchObject({ kind: 'finish', outcome: 'timeout' });
    expect(s.finished).toBe(true);
    expect(s.timeout()).toEqual([]);
  });

  it('retransmits the OACK when ACK 0 does not come', () => {
    const s = new ReadSession(rrq({ tsize: '0' }), 10, limits);
    s.start();
    expect(wire(s.timeout(), Buffer.alloc(10))).toEqual([{ op: 'OACK', options: [{ name: 'tsize', value: '10' }] }]);
  });

  it('treats ERROR 8 after the OACK (the UEFI tsize probe) as a normal "probe" end', () => {
    const s = new ReadSession(rrq({ tsize: '0', blksize: '1468' }), 850_000, limits);
    s.start();
    expect(finish(s.receive({ op: 'ERROR', code: 8, message: 'User aborted download' }))).toMatchObject({ kind: 'finish', outcome: 'probe' });
    expect(s.receive(ack(0))).toEqual([]);
  });

  it('reports any other client ERROR as client-error; ignores stray DATA/RRQ from the client', () => {
    const s = new ReadSession(rrq(), 5000, limits);
    s.start();
    expect(s.receive({ op: 'DATA', block: 1, data: Buffer.alloc(3) })).toEqual([]);
    expect(s.receive(rrq())).toEqual([]);
    expect(finish(s.receive({ op: 'ERROR', code: 0, message: 'disk full' }))).toMatchObject({ outcome: 'client-error' });
  });

  it('abort sends an ERROR then finishes', () => {
    const s = new ReadSession(rrq(), 5000, limits);
    s.start();
    const actions = s.abort(0, 'read error');
    expect(wire(actions, Buffer.alloc(0))).toEqual([{ op: 'ERROR', code: 0, message: 'read error' }]);
    expect(finish(actions)).toMatchObject({ outcome: 'aborted' });
  });
});
