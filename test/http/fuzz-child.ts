/**
 * The HTTP fuzzer as a process, for servers only reachable inside a network namespace (an e2e
 * lab): `fuzz-child.ts BASE_URL SEED COUNT [TARGETS_JSON] [STOP_FILE]`. Prints the FuzzReport as
 * one JSON line. With STOP_FILE it runs rounds of COUNT requests (seed + round) until that file
 * exists, so a boot can be fuzzed from its start to its end whatever the machine's speed; the
 * report then sums the rounds and says how many ran (`rounds`).
 */
import { existsSync } from 'node:fs';
import { runFuzz, type FuzzReport, type FuzzTargets } from './fuzz-requests.ts';

const [baseUrl, seed, count, targets, stopFile] = process.argv.slice(2);
if (!baseUrl || !seed || !count) {
  process.stderr.write('usage: fuzz-child.ts BASE_URL SEED COUNT [TARGETS_JSON] [STOP_FILE]\n');
  process.exit(2);
}
const parsedTargets = targets ? (JSON.parse(targets) as FuzzTargets) : {};
const total: FuzzReport & { rounds: number } = { histogram: {}, serverErrors: [], unanswered: [], total: 0, rounds: 0 };
do {
  const report = await runFuzz(baseUrl, { seed: Number(seed) + total.rounds, count: Number(count), targets: parsedTargets });
  for (const [outcome, n] of Object.entries(report.histogram)) total.histogram[outcome] = (total.histogram[outcome] ?? 0) + n;
  total.serverErrors.push(...report.serverErrors);
  total.unanswered.push(...report.unanswered);
  total.total += report.total;
  total.rounds++;
} while (stopFile && !existsSync(stopFile));
process.stdout.write(`${JSON.stringify(total)}\n`);
