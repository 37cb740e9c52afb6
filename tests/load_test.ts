/**
 * Load: 32 concurrent streaming clients (the official `openai` client) against a real `Deno.serve`, with 8
 * sequences and room for the rest in the queue. Every request completes, none is refused, at most 8 run at
 * once, and each greedy answer equals the one the same request got when it ran alone. On the CPU backend the
 * sequences take turns; on WebGPU their decode steps share GPU passes (continuous batching, 8 lanes).
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import OpenAI from "openai";
import type { LoadModelOptions } from "../engine/model.ts";
import { loadModel } from "../engine/model.ts";
import { SKIP_GPU } from "../kernels/test_util.ts";
import { createPipeline } from "../pipeline.ts";
import { createApp } from "../routes/mod.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLIENTS = 32;
const SEQUENCES = 8;

const BACKENDS: { name: string; options: LoadModelOptions; gpu: boolean }[] = [
  { name: "cpu", options: { backend: "cpu" }, gpu: false },
  {
    name: "webgpu, continuous batching",
    options: { backend: "webgpu", dtype: "f32", batch: SEQUENCES },
    gpu: true,
  },
];

for (const backend of BACKENDS) {
  Deno.test({
    name: `${CLIENTS} concurrent streaming clients get the answers they get alone (${backend.name})`,
    ignore: backend.gpu && SKIP_GPU,
    fn: async () => {
      const model = await loadModel(`${ROOT}fixtures/models/olmoe`, {
        contextLength: 256,
        ...backend.options,
      });
      const pipeline = createPipeline({ model, maxConcurrency: SEQUENCES, queue: CLIENTS });
      const app = createApp(pipeline, { modelId: "olmoe", keepAliveMs: 0 });
      const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, app.fetch);
      const client = new OpenAI({
        baseURL: `http://127.0.0.1:${server.addr.port}/v1`,
        apiKey: "x",
        maxRetries: 0,
      });
      const prompts = Array.from(
        { length: CLIENTS },
        (_, i) => `Request ${i}: which experts handle token ${i * 7}?`,
      );
      const run = async (content: string) => {
        const stream = await client.chat.completions.create({
          model: "olmoe",
          messages: [{ role: "user", content }],
          max_tokens: 16 + (content.length % 9),
          temperature: 0,
          stream: true,
        });
        let text = "";
        let finish: string | null = null;
        for await (const chunk of stream) {
          text += chunk.choices[0]?.delta.content ?? "";
          finish = chunk.choices[0]?.finish_reason ?? finish;
        }
        return { text, finish };
      };
      try {
        const alone = [];
        for (const p of prompts) alone.push(await run(p));

        let peakActive = 0, peakWaiting = 0;
        const poll = setInterval(() => {
          peakActive = Math.max(peakActive, pipeline.scheduler.active);
          peakWaiting = Math.max(peakWaiting, pipeline.scheduler.waiting);
        }, 1);
        let together;
        try {
          together = await Promise.all(prompts.map(run));
        } finally {
          clearInterval(poll);
        }
        for (let i = 0; i < CLIENTS; i++) {
          assert.deepEqual(together[i], alone[i], `client ${i}`);
          assert.ok(together[i].finish === "stop" || together[i].finish === "length");
        }
        assert.ok(alone.some((a) => a.text.length > 0), "the answers are not empty");
        assert.equal(peakActive, SEQUENCES, "the sequences were all busy");
        assert.ok(peakWaiting > 0, "the excess waited in the queue");
        const metrics = await (await app.request("/metrics")).text();
        assert.doesNotMatch(metrics, /edgemix_requests_rejected_total\{/);
        assert.match(
          metrics,
          new RegExp(`^edgemix_requests_finished_total\\{finish_reason="(stop|length)"\\} `, "m"),
        );
        assert.deepEqual([pipeline.scheduler.active, pipeline.scheduler.waiting], [0, 0]);
      } finally {
        await server.shutdown();
        await model.dispose();
      }
    },
  });
}
