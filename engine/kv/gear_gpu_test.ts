import assert from "node:assert/strict";
import { GEAR_SPLIT_TIERS, GEAR_WIDE_MAX_SPLITS } from "../../kernels/gear_attention.ts";
import { GEAR_TILE } from "../../kernels/gear_layout.ts";
import type { Dispatch, Program } from "../../kernels/gpu.ts";
import { GearGpu, type GearGpuLayer } from "./gear_gpu.ts";

/** A dispatch named `name` (no GPU objects: emitAttention only picks and sizes dispatches). */
function named(name: string, grid: [number, number, number]): Dispatch {
  return { program: { name } as unknown as Program, group: {} as GPUBindGroup, grid };
}

/** A layer of 16 heads with a 64-key block, with or without the wide and the multi-tile kernels. */
function layer(wide: boolean, tiers: boolean): GearGpuLayer {
  return {
    buffer: 64,
    attention: named("full", [16, 1, 1]),
    split: named("split", [16, 1, 1]),
    splitWide: wide ? named("wide", [16, 1, 1]) : undefined,
    merge: named("merge", [5, 1, 1]),
    splitTiers: tiers
      ? GEAR_SPLIT_TIERS.map((t) => ({
        ...t,
        split: named(`split-t${t.tiles}`, [16, 1, 1]),
        merge: named(`merge-t${t.tiles}`, [5, 1, 1]),
      }))
      : [],
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
  // Each tier from its first position (the tier's first tile count), the one before it up to there.
  let before = { name: "split", merge: "merge", tiles: 1 };
  for (const t of GEAR_SPLIT_TIERS) {
    const first = (t.minTiles - 1) * GEAR_TILE;
    const last = before.tiles * GEAR_TILE;
    assert.deepEqual(attention(L, first - 1), [
      `${before.name} 16x1x${Math.floor((first - 1) / last) + 1}`,
      `${before.merge} 5x1x1`,
    ]);
    assert.deepEqual(attention(L, first), [
      `split-t${t.tiles} 16x1x${Math.floor(first / (GEAR_TILE * t.tiles)) + 1}`,
      `merge-t${t.tiles} 5x1x1`,
    ]);
    before = { name: `split-t${t.tiles}`, merge: `merge-t${t.tiles}`, tiles: t.tiles };
  }
  // 32,778: 513 tiles, 129 workgroups of 4 tiles per head; a step completing a block also compresses it.
  assert.deepEqual(emitted(L, 1, 32778), ["split-t4 16x1x129", "merge-t4 5x1x1"]);
  assert.deepEqual(emitted(L, 1, 32831), ["split-t4 16x1x129", "merge-t4 5x1x1", "compress-decode 4x2x1"]);
  // Batched rows: split-K over the largest position's workgroups, one merge row per decode row.
  assert.deepEqual(emitted(L, 3, 9000, [100, 9000, 5000]), ["split-t4 16x3x36", "merge-t4 5x3x1"]);
  assert.deepEqual(emitted(L, 3, 4000, [100, 4000, 63]), [
    "split-t2 16x3x32",
    "merge-t2 5x3x1",
    "compress-decode 4x2x3",
  ]);
  assert.deepEqual(emitted(L, 2, 1000, [1000, 62]), ["wide 16x2x16", "merge 5x2x1"]);
  // Prompt rows: the full kernel.
  assert.deepEqual(emitted(L, 8, 4096), ["full 16x8x1"]);
});

Deno.test("GearGpu.emitAttention falls back where a layer has no wide or multi-tile kernel", () => {
  const L = layer(false, false);
  assert.deepEqual(emitted(L, 1, 100), ["split 16x1x2", "merge 5x1x1"]);
  assert.deepEqual(emitted(L, 1, 32778), ["split 16x1x513", "merge 5x1x1"]);
});
