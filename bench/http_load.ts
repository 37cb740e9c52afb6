/**
 * HTTP load benchmark: serves a model in-process on 127.0.0.1, then runs rounds of concurrent streaming
 * `POST /v1/chat/completions` clients (1, 8 and 32 by default) and prints, per round, the time to first token
 * (p50/p90), the decode speed each client sees, and the aggregate throughput.
 *
 * ```sh
 * deno run -A bench/http_load.ts --model fixtures/models/olmoe --backend cpu
 * deno run -A bench/http_load.ts --model allenai/OLMoE-1B-7B-0924 --backend webgpu --clients 1,8,32 --max-tokens 128
 * ```
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { loadModel } from "../engine/model.ts";
import { MAX_BATCH_ROWS } from "../kernels/gpu.ts";
import { createPipeline } from "../pipeline.ts";
import { createApp } from "../routes/mod.ts";

const USAGE = `Usage: bench/http_load.ts [options]
  --model SRC            checkpoint directory or repo id (default fixtures/models/olmoe)
  --backend B            cpu, webgpu or auto (default auto)
  --dtype D              f32 or f16 on webgpu
  --clients LIST         concurrent clients per round (default 1,8,32)
  --requests N           requests per client per round (default 2)
  --max-tokens N         tokens per answer (default 64; the answer may stop earlier at an end token)
  --max-concurrency N    sequences the server runs at once (default: the largest client count); on webgpu
                         up to 32 of them decode together (continuous batching)
  --context N            positions of each sequence's KV cache (default: the model's, at most 4096)`;

interface Sample {
  ttftMs: number;
  totalMs: number;
  tokens: number;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

/** One streaming request; TTFT is measured to the first content chunk. */
async function request(base: string, content: string, maxTokens: number): Promise<Sample> {
  const t0 = performance.now();
  const res = await fetch(`${base}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      messages: [{ role: "user", content }],
      max_tokens: maxTokens,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let ttft = NaN, tokens = 0, buffer = "";
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, end).replace(/^data: /, "");
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]" || data.startsWith(":")) continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.choices[0]?.delta?.content && Number.isNaN(ttft)) ttft = performance.now() - t0;
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
    }
  }
  return { ttftMs: ttft, totalMs: performance.now() - t0, tokens };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: "string" },
      backend: { type: "string" },
      dtype: { type: "string" },
      clients: { type: "string" },
      requests: { type: "string" },
      "max-tokens": { type: "string" },
      "max-concurrency": { type: "string" },
      context: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const source = values.model ?? fileURLToPath(new URL("../fixtures/models/olmoe", import.meta.url));
  const backend = (values.backend ?? "auto") as "cpu" | "webgpu" | "auto";
  const rounds = (values.clients ?? "1,8,32").split(",").map(Number);
  const perClient = Number(values.requests ?? "2");
  const maxTokens = Number(values["max-tokens"] ?? "64");
  if (rounds.some((n) => !Number.isInteger(n) || n < 1) || !(perClient >= 1) || !(maxTokens >= 1)) {
    throw new RangeError(`Invalid options\n\n${USAGE}`);
  }
  const maxConcurrency = Number(values["max-concurrency"] ?? Math.max(...rounds));
  const model = await loadModel(source, {
    backend,
    dtype: values.dtype as "f32" | "f16" | undefined,
    contextLength: values.context === undefined ? undefined : Number(values.context),
    batch: Math.min(maxConcurrency, MAX_BATCH_ROWS),
  });
  const pipeline = createPipeline({
    model,
    maxConcurrency,
    queue: Math.max(...rounds) * perClient,
    defaults: { temperature: 0 },
  });
  const app = createApp(pipeline, { modelId: "bench", keepAliveMs: 0 });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, app.fetch);
  const base = `http://127.0.0.1:${server.addr.port}`;
  const progress = Deno.stderr.isTerminal();
  try {
    await request(base, "warm up", 4);
    console.log(
      `model ${source}, backend ${model.backend}, dtype ${model.dtype}, max_tokens ${maxTokens}, ` +
        `${perClient} requests per client, ${maxConcurrency} sequences, ${navigator.hardwareConcurrency} CPU threads`,
    );
    console.log("");
    console.log(
      "| clients | requests | TTFT p50 (ms) | TTFT p90 (ms) | per-client decode (tok/s, p50) | aggregate (tok/s) |",
    );
    console.log("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const clients of rounds) {
      if (progress) await Deno.stderr.write(new TextEncoder().encode(`running ${clients} clients...\r`));
      const t0 = performance.now();
      const samples = (await Promise.all(
        Array.from({ length: clients }, async (_, c) => {
          const out: Sample[] = [];
          for (let r = 0; r < perClient; r++) {
            out.push(
              await request(base, `Client ${c} request ${r}: what does expert ${c % 8} do?`, maxTokens),
            );
          }
          return out;
        }),
      )).flat();
      const wall = performance.now() - t0;
      const ttft = samples.map((s) => s.ttftMs).filter(Number.isFinite).sort((a, b) => a - b);
      const decode = samples.filter((s) => s.tokens > 1 && Number.isFinite(s.ttftMs))
        .map((s) => (s.tokens - 1) / ((s.totalMs - s.ttftMs) / 1000)).sort((a, b) => a - b);
      const tokens = samples.reduce((a, s) => a + s.tokens, 0);
      console.log(
        `| ${clients} | ${samples.length} | ${percentile(ttft, 0.5).toFixed(1)} | ${
          percentile(ttft, 0.9).toFixed(1)
        } | ` +
          `${percentile(decode, 0.5).toFixed(1)} | ${(tokens / (wall / 1000)).toFixed(1)} |`,
      );
    }
  } finally {
    await server.shutdown();
    await model.dispose();
  }
}

if (import.meta.main) await main();
