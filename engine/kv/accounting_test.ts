import assert from "node:assert/strict";
import { kvBytes, kvBytesPerToken, plainBytesPerToken, simulateSegments } from "./accounting.ts";
import { GearCpuCache } from "./gear_cpu.ts";
import { resolveKvCache } from "./kv_options.ts";

const big = { numLayers: 16, numKvHeads: 16, headDim: 128 };

Deno.test("KV bytes per token: 2-bit quant of 128-wide heads is about 16% of f16 at long contexts", () => {
  assert.equal(plainBytesPerToken(big, "f16"), 16 * 2 * 16 * 128 * 2);
  const quant = resolveKvCache({ mode: "quant", bits: 2 }, "f16");
  // Per head and token: K codes 32 B + K scale/min 128·4/64 = 8 B; V codes 32 B + 2 groups · 4 B = 8 B.
  const perHead = 32 + 8 + 32 + 8;
  const n = 32768;
  const exact = (16 * (perHead * 16 * n + (n / 64) * 4)) / n;
  assert.ok(Math.abs(kvBytesPerToken(big, quant, n, n, 512, "f16") - exact) < 1e-6);
  assert.ok(exact / plainBytesPerToken(big, "f16") < 0.16);
  // Low rank and outliers cost more; 4 bits more still; the full-precision buffer weighs on short contexts.
  const gearL = kvBytesPerToken(big, resolveKvCache({ mode: "gear-l" }, "f16"), n, n, 512, "f16");
  const gear = kvBytesPerToken(big, resolveKvCache({ mode: "gear" }, "f16"), n, n, 512, "f16");
  const gear4 = kvBytesPerToken(big, resolveKvCache({ mode: "gear", bits: 4 }, "f16"), n, n, 512, "f16");
  assert.ok(exact < gearL && gearL < gear && gear < gear4, `${exact} ${gearL} ${gear} ${gear4}`);
  assert.ok(kvBytesPerToken(big, quant, 100, 100, 512, "f16") > 0.4 * plainBytesPerToken(big, "f16"));
  // gear-2 with the authors' defaults (group 64, rank 4 then 2, 2 % outliers) stays within 20 % of f16: per head
  // and token K and V each hold codes 32 B, scale/min 8 B, Q 4 B (int8) and outliers 4 B (u16 entries).
  assert.ok(gear / plainBytesPerToken(big, "f16") <= 0.2, `gear-2 ${gear / plainBytesPerToken(big, "f16")}`);
});

Deno.test("simulateSegments: prompt chunks with the prefill rank, then one block per 64 decode steps", () => {
  const kv = resolveKvCache({ mode: "gear" }, "f16");
  const { segments, fpTokens } = simulateSegments(kv, 300, 500, 128);
  assert.deepEqual(segments, [
    { start: 0, length: 128, rank: 4 },
    { start: 128, length: 128, rank: 4 },
    // The prompt's last chunk (44 rows) completes no block; decode steps complete one per 64 tokens.
    { start: 256, length: 64, rank: 2 },
    { start: 320, length: 64, rank: 2 },
    { start: 384, length: 64, rank: 2 },
  ]);
  assert.equal(fpTokens, 500 - 448);
});

Deno.test("the CPU cache's bytes equal the accounting of the same calls", () => {
  const shape = { numLayers: 2, numKvHeads: 2, headDim: 16 };
  const kv = resolveKvCache({ mode: "gear", bits: 4 }, "f32");
  const cache = new GearCpuCache(shape, kv, 400, 128);
  const rows = (n: number) => new Float32Array(n * 2 * 16).map((_, i) => Math.sin(i));
  const call = (pos: number, n: number) => {
    for (let l = 0; l < 2; l++) cache.append(l, rows(n), rows(n), pos, n);
    cache.endCall(pos, n);
  };
  call(0, 128);
  call(128, 72);
  for (let p = 200; p < 330; p++) call(p, 1);
  const sim = simulateSegments(kv, 200, 330, 128);
  assert.deepEqual(cache.segments, sim.segments);
  assert.equal(cache.bytes(), kvBytes(shape, kv, sim.segments, sim.fpTokens, "f32"));
  assert.equal(cache.bytesF16(), 330 * plainBytesPerToken(shape, "f16"));
});
