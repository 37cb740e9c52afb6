/**
 * What a second code path in a MoE projection's grouped expert kernel costs on this adapter
 * (engine/quant/cost.ts measurePathCosts), for pairs of schemes at one layer shape (default OLMoE-1B-7B's).
 *
 *   deno run -A bench/path_cost.ts [--hidden 2048 --inter 1024 --topk 8] [--pairs w4g128:w2g128,w4g128:w3g128]
 *     [--layers 8 --reps 8 --trials 5]
 *
 * @module
 */

import { parseArgs } from "node:util";
import { measurePathCosts } from "../engine/quant/cost.ts";
import { acquireGpu } from "../kernels/gpu.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    hidden: { type: "string", default: "2048" },
    inter: { type: "string", default: "1024" },
    topk: { type: "string", default: "8" },
    pairs: {
      type: "string",
      default: "w4g128:w2g128,w4g128:w3g128,w4g128:w8g128,w4g128:w4g64,w2g128:w3g128",
    },
    layers: { type: "string", default: "8" },
    reps: { type: "string", default: "8" },
    trials: { type: "string", default: "5" },
  },
});
const shape = { hidden: Number(values.hidden), inter: Number(values.inter), topK: Number(values.topk) };
const opts = { layers: Number(values.layers), reps: Number(values.reps), trials: Number(values.trials) };
console.log(
  `adapter: ${(await acquireGpu()).adapterName}; layer ${JSON.stringify(shape)}; ${JSON.stringify(opts)}`,
);
console.log("| pair | gate/up path cost | down path cost |\n| --- | --- | --- |");
for (const p of values.pairs.split(",")) {
  const pair = p.split(":") as [string, string];
  const c = await measurePathCosts(shape, pair, opts);
  console.log(`| ${pair.join(" + ")} | ${(100 * c.gate_up).toFixed(2)} % | ${(100 * c.down).toFixed(2)} % |`);
}
