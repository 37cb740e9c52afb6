/**
 * The benchmarks' names of KV caches: "f16", "f32", or a compressed mode and its bits ("quant-2", "gear-l-4",
 * "gear-2").
 *
 * @module
 */

import type { KvCacheOptions } from "../engine/kv/kv_options.ts";

/** "f16", "quant-2", "gear-l-4", "gear-2" → the kvCache option; a RangeError for anything else. */
export function kvModeOptions(name: string): KvCacheOptions {
  if (name === "f16" || name === "f32") return { mode: name };
  const m = /^(quant|gear-l|gear)-(\d)$/.exec(name);
  if (!m) {
    throw new RangeError(
      `Cannot run: unknown KV cache ${name} (f16, f32, or e.g. quant-2, gear-l-4, gear-2)`,
    );
  }
  return { mode: m[1] as KvCacheOptions["mode"], bits: Number(m[2]) };
}
