import assert from "node:assert/strict";
import { GEAR_LONG_MIN_SPLITS, GEAR_LONG_TILES, GEAR_WIDE_MAX_SPLITS } from "../../kernels/gear_attention.ts";
import { GEAR_TILE } from "../../kernels/gear_layout.ts";
import type { Dispatch, Program } from "../../kernels/gpu.ts";
import { GearGpu, type GearGpuLayer } from "./gear_gpu.ts";

/** A dispatch named `name` (no GPU objects: emitAttention only picks and sizes dispatches). */
function named(name: string, grid: [number, number, number]): Dispatch {
  return { program: { name } as unknown as Program, group: {} as GPUBindGroup, grid };
}

/** A layer of 16 heads with a 64-key block, with or without the wide and the long kernels. */
function layer(wide: boolean, long: boolean): GearGpuLayer {
  return {
    buffer: 64,
    attention: named("full", [16, 1, 1]),
    split: named("split", [16, 1, 1]),
    splitWide: wide ? named("wide", [16, 1, 1]) : undefined,
    merge: named("merge", [5, 1, 1]),
    splitLong: long ? { split: named("long", [16, 1, 1]), merge: named("merge-long", [5, 1, 1]) } : undefined,
    compressPrefill: named("compress-prefill", [4, 2, 1]),
    compressDecode: named("compress-decode", [4, 2, 1]),
  } as unknown as GearGpuLayer;
}

/** The names and grids emitAttention emits for one call. */
function emitted(L: GearGpuLayer, rows: number, pos: number, batched?: number[]): string[] {
  const out: string[] = [];
  GearGpu.emitAttention(L, rows, pos, (d) => {
    out.push(`${(d.program as unknown as { name: string }).name} ${d.grid.join("x")}`);
  }, batched);
  return out;
}

/** {@linkcode emitted} without the compression (emitted where the call completes a block). */
const attention = (L: GearGpuLayer, pos: number) =>
  emitted(L, 1, pos).filter((d) => !d.startsWith("compress"));

Deno.test("GearGpu.emitAttention picks the split-K kernel by context length", () => {
  const L = layer(true, true);
  const wideLast = GEAR_WIDE_MAX_SPLITS * GEAR_TILE - 1; // the last position with GEAR_WIDE_MAX_SPLITS tiles
  assert.deepEqual(attention(L, wideLast), [`wide 16x1x${GEAR_WIDE_MAX_SPLITS}`, "merge 5x1x1"]);
  assert.deepEqual(attention(L, wideLast + 1), [`split 16x1x${GEAR_WIDE_MAX_SPLITS + 1}`, "merge 5x1x1"]);
  const longFirst = (GEAR_LONG_MIN_SPLITS - 1) * GEAR_TILE; // the first position with GEAR_LONG_MIN_SPLITS tiles
  assert.deepEqual(attention(L, longFirst - 1), [`split 16x1x${GEAR_LONG_MIN_SPLITS - 1}`, "merge 5x1x1"]);
  const perLong = GEAR_TILE * GEAR_LONG_TILES;
  assert.deepEqual(attention(L, longFirst), [
    `long 16x1x${Math.floor(longFirst / perLong) + 1}`,
    "merge-long 5x1x1",
  ]);
  // 32,778: 513 tiles, 129 workgroups of 4 tiles per head; a step completing a block also compresses it.
  assert.deepEqual(emitted(L, 1, 32778), ["long 16x1x129", "merge-long 5x1x1"]);
  assert.deepEqual(emitted(L, 1, 32831), ["long 16x1x129", "merge-long 5x1x1", "compress-decode 4x2x1"]);
  // Batched rows: split-K over the largest position's workgroups, one merge row per decode row.
  assert.deepEqual(emitted(L, 3, 9000, [100, 9000, 5000]), ["long 16x3x36", "merge-long 5x3x1"]);
  assert.deepEqual(emitted(L, 2, 1000, [1000, 63]), ["wide 16x2x16", "merge 5x2x1", "compress-decode 4x2x2"]);
  // Prompt rows: the full kernel.
  assert.deepEqual(emitted(L, 8, 4096), ["full 16x8x1"]);
});

Deno.test("GearGpu.emitAttention falls back where a layer has no wide or long kernel", () => {
  const L = layer(false, false);
  assert.deepEqual(emitted(L, 1, 100), ["split 16x1x2", "merge 5x1x1"]);
  assert.deepEqual(emitted(L, 1, 32778), ["split 16x1x513", "merge 5x1x1"]);
});
