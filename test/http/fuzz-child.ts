/**
 * The HTTP fuzzer as a process, for servers only reachable inside a network namespace (an e2e
 * lab): `fuzz-child.ts BASE_URL SEED COUNT [TARGETS_JSON]`. Prints the FuzzReport as one JSON line.
 */
import { runFuzz, type FuzzTargets } from './fuzz-requests.ts';

const [baseUrl, seed, count, targets] = process.argv.slice(2);
if (!baseUrl || !seed || !count) {
  process.stderr.write('usage: fuzz-child.ts BASE_URL SEED COUNT [TARGETS_JSON]\n');
  process.exit(2);
}
const report = await runFuzz(baseUrl, { seed: Number(seed), count: Number(count), targets: targets ? (JSON.parse(targets) as FuzzTargets) : {} });
process.stdout.write(`${JSON.stringify(report)}\n`);
