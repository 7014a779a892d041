import { afterEach, describe, expect, it } from 'vitest';
import { LoopLagSampler, loopLagSampler, loopLagSeconds } from '../../server/events/loop-lag.ts';
import { harness, type Harness } from '../http/setup.ts';
import { parsePrometheusText, sampleValue } from './prom-parse.ts';

let h: Harness | undefined;
afterEach(async () => h?.close());

/** Keeps the event loop busy for `ms`: whatever waits behind it is at least that late. */
function block(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

/** Waits until the sampler's timer has recorded one more interval than `seen`. */
async function recorded(sampler: LoopLagSampler, seen: number): Promise<void> {
  while (sampler.samples <= seen) await new Promise((resolve) => setTimeout(resolve, 1));
}

describe('event loop lag', () => {
  it('is what the delay monitor measured beyond its own interval, never below 0', () => {
    // An idle loop sampled every 10 ms reads p50 10.2 ms and min 9.2 ms (Node 20): 0.2 ms and 0 late.
    expect(loopLagSeconds(10_223_615, 10)).toBeCloseTo(0.000223615, 9);
    expect(loopLagSeconds(9_199_616, 10)).toBe(0);
    expect(loopLagSeconds(160_000_000, 10)).toBeCloseTo(0.15, 9);
  });

  it('a blocked loop shows in the next reading, and each reading starts afresh', async () => {
    const sampler = new LoopLagSampler();
    await recorded(sampler, 0);
    const before = sampler.samples;
    block(150);
    await recorded(sampler, before);
    const lag = sampler.take();
    expect(lag.max).toBeGreaterThanOrEqual(0.14);
    expect(lag.p50).toBeLessThanOrEqual(lag.max);
    expect(sampler.take()).toEqual({ p50: 0, p99: 0, max: 0 });
  });

  it('/metrics carries the main loop lateness since the last scrape', async () => {
    h = await harness();
    await h.app.inject('/metrics');
    const sampler = loopLagSampler();
    await recorded(sampler, 0);
    const before = sampler.samples;
    block(150);
    await recorded(sampler, before);
    const families = parsePrometheusText((await h.app.inject('/metrics')).body);
    expect(families.get('netboot_event_loop_lag_seconds')?.type).toBe('gauge');
    expect(sampleValue(families, 'netboot_event_loop_lag_seconds', { quantile: '1' })).toBeGreaterThanOrEqual(0.14);
    expect(sampleValue(families, 'netboot_event_loop_lag_seconds', { quantile: '0.5' })).toBeLessThanOrEqual(sampleValue(families, 'netboot_event_loop_lag_seconds', { quantile: '1' })!);
  });
});
