import type { Finding } from './finding.ts';

/**
 * Would the host's packet filter let a packet in? A small evaluator of the INPUT path of
 * `iptables-save` and `nft list ruleset` output for one packet shape (protocol, port, interface,
 * conntrack state). Rules with matches it does not understand (source addresses, marks, ...) are
 * taken as not matching: a finding names only rules that surely apply.
 */
export interface PacketProbe {
  proto: 'udp' | 'tcp';
  port: number;
  iface: string;
  state: 'new' | 'established';
  what: string;
}

export interface Verdict {
  allowed: boolean;
  /** The rule or policy that decided. */
  by: string;
}

type Outcome = { kind: 'accept' | 'drop'; by: string } | { kind: 'return' } | null;

const MAX_DEPTH = 16;

function portIn(spec: string, port: number): boolean {
  return spec.split(',').some((part) => {
    const [lo, hi] = part.split(/[:-]/).map((p) => Number(p.trim()));
    return hi === undefined ? lo === port : lo !== undefined && port >= lo && port <= hi;
  });
}

function ifaceMatches(pattern: string, iface: string): boolean {
  const p = pattern.replace(/^"|"$/g, '');
  return p.endsWith('+') || p.endsWith('*') ? iface.startsWith(p.slice(0, -1)) : p === iface;
}

const stateMatches = (list: string, probe: PacketProbe) =>
  list
    .toLowerCase()
    .split(/[,\s{}]+/)
    .filter(Boolean)
    .includes(probe.state);

/** Splits a line into words, keeping "quoted strings" (with \" inside) whole. */
function words(line: string): string[] {
  return line.match(/"(?:[^"\\]|\\.)*"|\S+/g) ?? [];
}

// ---------------------------------------------------------------- iptables

interface IptChain {
  policy: string | null;
  rules: string[];
}

export function parseIptablesFilter(save: string): Map<string, IptChain> {
  const chains = new Map<string, IptChain>();
  let inFilter = false;
  for (const raw of save.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('*')) inFilter = line === '*filter';
    if (!inFilter) continue;
    const decl = /^:(\S+)\s+(\S+)/.exec(line);
    if (decl) chains.set(decl[1]!, { policy: decl[2] === '-' ? null : decl[2]!, rules: [] });
    const rule = /^-A\s+(\S+)\s/.exec(line);
    if (rule) chains.get(rule[1]!)?.rules.push(line);
  }
  return chains;
}

/** true/false, or null when the rule has a match we cannot evaluate (then it is skipped). */
function iptRuleMatches(tokens: string[], probe: PacketProbe): boolean | null {
  let result = true;
  for (let i = 0; i < tokens.length; i++) {
    let negate = false;
    if (tokens[i] === '!') {
      negate = true;
      i++;
    }
    const opt = tokens[i]!;
    const value = tokens[i + 1] ?? '';
    let m: boolean | null;
    switch (opt) {
      case '-A':
      case '-m':
      case '--comment':
        i++;
        continue;
      case '-j':
      case '-g':
        return result; // target options follow
      case '-p':
      case '--protocol':
        m = value === 'all' || value === probe.proto;
        break;
      case '-i':
      case '--in-interface':
        m = ifaceMatches(value, probe.iface);
        break;
      case '--dport':
      case '--destination-port':
      case '--dports':
      case '--destination-ports':
        m = portIn(value, probe.port);
        break;
      case '--ctstate':
      case '--state':
        m = stateMatches(value, probe);
        break;
      default:
        return null;
    }
    i++;
    if (negate) m = !m;
    if (!m) result = false;
  }
  return result;
}

function target(tokens: string[]): { jump: string; goto: boolean } | null {
  const j = tokens.findIndex((t) => t === '-j' || t === '-g');
  return j >= 0 && tokens[j + 1] ? { jump: tokens[j + 1]!, goto: tokens[j] === '-g' } : null;
}

function walkIptables(chains: Map<string, IptChain>, name: string, probe: PacketProbe, depth: number): Outcome {
  const chain = chains.get(name);
  if (!chain || depth > MAX_DEPTH) return null;
  for (const rule of chain.rules) {
    const tokens = words(rule);
    if (iptRuleMatches(tokens, probe) !== true) continue;
    const t = target(tokens);
    if (!t) continue;
    if (t.jump === 'ACCEPT') return { kind: 'accept', by: rule };
    if (t.jump === 'DROP' || t.jump === 'REJECT') return { kind: 'drop', by: rule };
    if (t.jump === 'RETURN') return { kind: 'return' };
    if (chains.has(t.jump)) {
      const sub = walkIptables(chains, t.jump, probe, depth + 1);
      if (sub && sub.kind !== 'return') return sub;
      if (t.goto) return { kind: 'return' };
    }
    // LOG, MARK, ...: non-terminating, go on
  }
  return null;
}

export function evaluateIptables(save: string, probe: PacketProbe): Verdict {
  const chains = parseIptablesFilter(save);
  const outcome = walkIptables(chains, 'INPUT', probe, 0);
  if (outcome && outcome.kind !== 'return') return { allowed: outcome.kind === 'accept', by: outcome.by };
  const policy = chains.get('INPUT')?.policy ?? 'ACCEPT';
  return { allowed: policy !== 'DROP', by: `iptables INPUT policy ${policy}` };
}

// ---------------------------------------------------------------- nftables

interface NftChain {
  family: string;
  table: string;
  name: string;
  hook: string | null;
  policy: string;
  rules: string[];
}

export function parseNftRuleset(text: string): NftChain[] {
  const chains: NftChain[] = [];
  let table: { family: string; name: string } | null = null;
  let chain: NftChain | null = null;
  let depth = 0;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const t = /^table\s+(\S+)\s+(\S+)\s*\{$/.exec(line);
    const c = /^chain\s+(\S+)\s*\{$/.exec(line);
    if (t && depth === 0) {
      table = { family: t[1]!, name: t[2]! };
      depth = 1;
      continue;
    }
    if (c && depth === 1 && table) {
      chain = { family: table.family, table: table.name, name: c[1]!, hook: null, policy: 'accept', rules: [] };
      chains.push(chain);
      depth = 2;
      continue;
    }
    if (line === '}') {
      depth = Math.max(0, depth - 1);
      if (depth < 2) chain = null;
      if (depth === 0) table = null;
      continue;
    }
    if (line.endsWith('{')) {
      depth++; // a set/map/flowtable body: not rules
      continue;
    }
    if (!chain || depth !== 2) continue;
    const hook = /\btype\s+filter\s+hook\s+(\S+)/.exec(line);
    if (hook) {
      chain.hook = hook[1]!;
      const policy = /policy\s+(\w+)/.exec(line);
      if (policy) chain.policy = policy[1]!;
      continue;
    }
    chain.rules.push(line);
  }
  return chains;
}

/** Reads an nft value: a word, or a `{ a, b }` set, starting at tokens[i]; returns the value and the next index. */
function nftValue(tokens: string[], i: number): [string, number] {
  if (tokens[i] !== '{') return [tokens[i] ?? '', i + 1];
  const parts: string[] = [];
  let j = i + 1;
  while (j < tokens.length && tokens[j] !== '}') parts.push(tokens[j++]!.replace(/,$/, ''));
  return [parts.filter(Boolean).join(','), j + 1];
}

type NftVerdict = { kind: 'accept' | 'drop' | 'return' } | { kind: 'jump' | 'goto'; chain: string } | null;

/** Whether an nft rule matches the probe (null: a match we do not understand), and its verdict. */
function nftRule(line: string, probe: PacketProbe): { matches: boolean | null; verdict: NftVerdict } {
  const tokens = words(line.replace(/\{/g, ' { ').replace(/\}/g, ' } '));
  let matches: boolean | null = true;
  let verdict: NftVerdict = null;
  const and = (m: boolean) => {
    if (matches !== null && !m) matches = false;
  };
  let i = 0;
  while (i < tokens.length) {
    const word = tokens[i]!;
    const next = tokens[i + 1];
    if (word === 'counter') {
      i++;
      while (tokens[i] === 'packets' || tokens[i] === 'bytes') i += 2;
      continue;
    }
    if (word === 'comment') {
      i += 2;
      continue;
    }
    if (word === 'log') {
      i++;
      while (tokens[i] === 'prefix' || tokens[i] === 'level' || tokens[i] === 'flags') i += 2;
      continue;
    }
    if (word === 'accept' || word === 'drop' || word === 'return') {
      verdict = { kind: word };
      i++;
      continue;
    }
    if (word === 'reject') {
      verdict = { kind: 'drop' };
      break; // "with icmp ..." follows
    }
    if ((word === 'jump' || word === 'goto') && next) {
      verdict = { kind: word, chain: next };
      i += 2;
      continue;
    }
    // A match: subject words, an optional != / ==, then a value.
    let subject: string;
    if (word === 'iifname' || word === 'iif') {
      subject = 'iif';
      i++;
    } else if ((word === 'meta' && next === 'l4proto') || (word === 'ip' && next === 'protocol')) {
      subject = 'proto';
      i += 2;
    } else if ((word === 'udp' || word === 'tcp' || word === 'th') && next === 'dport') {
      subject = `${word}-dport`;
      i += 2;
    } else if (word === 'ct' && next === 'state') {
      subject = 'ct';
      i += 2;
    } else {
      matches = null;
      break;
    }
    let negate = false;
    if (tokens[i] === '!=' || tokens[i] === '==') {
      negate = tokens[i] === '!=';
      i++;
    }
    const [value, after] = nftValue(tokens, i);
    i = after;
    let m: boolean;
    if (subject === 'iif') m = value.split(',').some((v) => ifaceMatches(v, probe.iface));
    else if (subject === 'proto') m = value.split(',').includes(probe.proto);
    else if (subject === 'ct') m = stateMatches(value, probe);
    else {
      const proto = subject.split('-')[0];
      m = (proto === 'th' || proto === probe.proto) && portIn(value.replace(/\s/g, ''), probe.port);
      if (negate && proto !== 'th' && proto !== probe.proto) {
        and(false);
        continue;
      }
    }
    and(negate ? !m : m);
  }
  return { matches, verdict };
}

function walkNft(chains: NftChain[], chain: NftChain, probe: PacketProbe, depth: number): Outcome {
  if (depth > MAX_DEPTH) return null;
  for (const rule of chain.rules) {
    const { matches, verdict } = nftRule(rule, probe);
    if (matches !== true || !verdict) continue;
    if (verdict.kind === 'accept' || verdict.kind === 'drop') return { kind: verdict.kind, by: `nft ${chain.family} ${chain.table} ${chain.name}: ${rule}` };
    if (verdict.kind === 'return') return { kind: 'return' };
    const name = (verdict as { chain: string }).chain;
    const sub = chains.find((c) => c.family === chain.family && c.table === chain.table && c.name === name);
    if (!sub) continue;
    const result = walkNft(chains, sub, probe, depth + 1);
    if (result && result.kind !== 'return') return result;
    if (verdict.kind === 'goto') return { kind: 'return' };
  }
  return null;
}

/** Every base chain on the input hook sees the packet; a drop in any one of them is final. */
export function evaluateNft(ruleset: string, probe: PacketProbe): Verdict {
  const chains = parseNftRuleset(ruleset);
  for (const base of chains.filter((c) => c.hook === 'input' && (c.family === 'inet' || c.family === 'ip'))) {
    const outcome = walkNft(chains, base, probe, 0);
    if (outcome && outcome.kind === 'drop') return { allowed: false, by: outcome.by };
    if ((!outcome || outcome.kind === 'return') && base.policy === 'drop') {
      return { allowed: false, by: `nft ${base.family} ${base.table} ${base.name}: policy drop` };
    }
  }
  return { allowed: true, by: 'nft: accepted' };
}

// ---------------------------------------------------------------- the check

export function firewallProbes(needs: readonly { proto: 'udp' | 'tcp'; port: number; what: string }[], iface: string, tftp: boolean): PacketProbe[] {
  const probes: PacketProbe[] = needs.map((n) => ({ ...n, iface, state: 'new' }));
  // TFTP answers come from an ephemeral port; the client's ACKs to it are "established" for conntrack.
  if (tftp) probes.push({ proto: 'udp', port: 50000, iface, what: 'TFTP data (ACKs to an ephemeral port)', state: 'established' });
  return probes;
}

export function checkFirewall(rules: { iptables: string | null; nft: string | null }, probes: readonly PacketProbe[]): Finding[] {
  if (rules.iptables === null && rules.nft === null) {
    return [{ check: 'firewall', severity: 'info', summary: 'no iptables-save or nft to read the packet filter with (none installed, or not root)' }];
  }
  const findings: Finding[] = [];
  for (const probe of probes) {
    const verdicts = [rules.iptables !== null ? evaluateIptables(rules.iptables, probe) : null, rules.nft !== null ? evaluateNft(rules.nft, probe) : null];
    const blocked = verdicts.find((v): v is Verdict => v !== null && !v.allowed);
    if (!blocked) continue;
    const label = probe.state === 'new' ? `${probe.port}/${probe.proto} (${probe.what})` : `${probe.what}`;
    findings.push({
      check: 'firewall',
      severity: 'fail',
      summary: `the packet filter drops ${label} arriving on ${probe.iface}`,
      details: [`by: ${blocked.by}`],
      fix:
        probe.state === 'established'
          ? `accept replies: iptables -I INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT (nft: ct state established,related accept)`
          : `accept it before that rule: iptables -I INPUT -i ${probe.iface} -p ${probe.proto} --dport ${probe.port} -j ACCEPT (nft: iifname "${probe.iface}" ${probe.proto} dport ${probe.port} accept)`,
    });
  }
  if (!findings.length) {
    const read = [rules.iptables !== null ? 'iptables' : null, rules.nft !== null ? 'nftables' : null].filter(Boolean).join(' and ');
    findings.push({ check: 'firewall', severity: 'ok', summary: `${read} let in ${probes.filter((p) => p.state === 'new').map((p) => `${p.port}/${p.proto}`).join(', ')} on ${probes[0]?.iface ?? '?'}` });
  }
  return findings;
}
