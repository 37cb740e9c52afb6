import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ModelSourceError } from "../engine/hub.ts";
import { ModelDisposedError } from "../engine/errors.ts";
import { tinyKeepProbability, writeTinyClassifier } from "./_tiny_classifier.ts";
import { encodeChunk } from "./lingua_algorithm.ts";
import { CompressorLoadError, isClassifierFile, loadTokenClassifier } from "./token_classifier.ts";

const dir = await Deno.makeTempDir({ prefix: "token_classifier_test_" });
const xlmr = await writeTinyClassifier(join(dir, "xlmr"), "xlmr");
const bert = await writeTinyClassifier(join(dir, "bert"), "bert", { newTokens: true });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

const hasFfi = (await Deno.permissions.query({ name: "ffi" })).state === "granted";
const TEXTS = [
  "John: So, um, I've been thinking about the project timeline.",
  "Sarah agree. [NEW3] the 2024 rate",
  "你好世界 привет мир",
  "",
];

for (const backend of ["native", "wasm"] as const) {
  Deno.test({
    name:
      `loadTokenClassifier() with backend ${backend} gives the model's keep probabilities and logits at every position`,
    ignore: backend === "native" && !hasFfi,
    fn: async () => {
      for (const model of [xlmr, bert]) {
        const clf = await loadTokenClassifier(model.dir, { backend, progress: false });
        assert.equal(clf.backend, backend);
        assert.equal(clf.device, backend === "native" ? "cpu" : "wasm");
        const chunks = TEXTS.map((t) => encodeChunk(t, clf.tokenizer, 512));
        const probs = await clf.keepProbabilities(chunks);
        assert.equal(probs.length, chunks.length);
        chunks.forEach((c, i) => {
          assert.equal(probs[i].length, c.ids.length);
          // Virtual [NEW] ids (past the vocabulary) reach the model as the unknown token.
          const expected = [...c.ids].map((id) =>
            tinyKeepProbability(model.table, id >= model.vocabSize ? clf.tokenizer.unkTokenId : id)
          );
          assert.deepEqual([...probs[i]], expected, `${model.dir} text ${i}`);
        });
        // The raw logits, (seq, 2) per chunk: the table's row of each (unknown-mapped) id.
        const logits = await clf.logits(chunks);
        chunks.forEach((c, i) => {
          assert.equal(logits[i].labels, 2);
          const expected = [...c.ids].flatMap((id) => {
            const row = id >= model.vocabSize ? clf.tokenizer.unkTokenId : id;
            return [model.table[2 * row], model.table[2 * row + 1]];
          });
          assert.deepEqual([...logits[i].data], expected, `${model.dir} logits of text ${i}`);
        });
        await clf.dispose();
        await assert.rejects(clf.logits(chunks), ModelDisposedError);
        await assert.rejects(clf.keepProbabilities(chunks), ModelDisposedError);
      }
    },
  });
}

Deno.test("keepProbabilities() gives the same results whatever the batching", async () => {
  const clf = await loadTokenClassifier(xlmr.dir, { progress: false });
  const many = await loadTokenClassifier(xlmr.dir, { progress: false, maxBatchSize: 3, maxBatchTokens: 40 });
  const words = "the project timeline need make changes agree tight we I it".split(" ");
  const chunks = Array.from({ length: 23 }, (_, i) => {
    const text = Array.from({ length: (i * 7) % 31 + 1 }, (_, j) => words[(i + j * 3) % words.length]).join(
      " ",
    );
    return encodeChunk(text, clf.tokenizer, 512);
  });
  const a = await clf.keepProbabilities(chunks);
  const b = await many.keepProbabilities(chunks);
  assert.deepEqual(b.map((p) => [...p]), a.map((p) => [...p]));
  await clf.dispose();
  await many.dispose();
});

Deno.test("loadTokenClassifier() without --allow-ffi: auto falls back to WebAssembly, native fails clearly", async () => {
  const script = join(dir, "no_ffi.ts");
  const module = new URL("./token_classifier.ts", import.meta.url).href;
  await Deno.writeTextFile(
    script,
    `import { loadTokenClassifier } from "${module}";
const out: Record<string, string> = {};
const auto = await loadTokenClassifier(${JSON.stringify(xlmr.dir)}, { backend: "auto", progress: false });
out.auto = auto.backend;
await auto.dispose();
try {
  await loadTokenClassifier(${JSON.stringify(xlmr.dir)}, { backend: "native" });
  out.native = "loaded";
} catch (e) {
  out.native = e instanceof Error ? e.name + ": " + e.message : String(e);
}
console.log(JSON.stringify(out));
`,
  );
  const config = fileURLToPath(new URL("../deno.json", import.meta.url));
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", "--config", config, "--allow-read", "--allow-env", "--allow-sys", script],
    cwd: fileURLToPath(new URL("..", import.meta.url)),
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  const out = JSON.parse(new TextDecoder().decode(stdout).trim().split("\n").at(-1)!);
  assert.equal(out.auto, "wasm");
  assert.match(out.native, /^CompressorLoadError: Cannot load the native ONNX Runtime: .*--allow-ffi/);
});

Deno.test({
  name:
    "loadTokenClassifier() with the wasm build on device webgpu runs the model on the GPU: the same logits",
  ignore: !("gpu" in navigator) || (await navigator.gpu.requestAdapter()) === null,
  fn: async () => {
    for (const model of [xlmr, bert]) {
      const clf = await loadTokenClassifier(model.dir, {
        backend: "wasm",
        device: "webgpu",
        progress: false,
      });
      assert.equal(clf.backend, "wasm");
      assert.equal(clf.device, "webgpu");
      const chunks = TEXTS.map((t) => encodeChunk(t, clf.tokenizer, 512));
      const logits = await clf.logits(chunks);
      chunks.forEach((c, i) => {
        const expected = [...c.ids].flatMap((id) => {
          const row = id >= model.vocabSize ? clf.tokenizer.unkTokenId : id;
          return [model.table[2 * row], model.table[2 * row + 1]];
        });
        assert.equal(logits[i].data.length, expected.length);
        // The tiny model is a lookup table: exact on any provider up to f32 rounding.
        logits[i].data.forEach((x, j) =>
          assert.ok(Math.abs(x - expected[j]) < 1e-5, `${model.dir} ${i}/${j}`)
        );
      });
      await clf.dispose();
    }
  },
});

Deno.test("loadTokenClassifier() refuses a device its ONNX Runtime build cannot run", async () => {
  await assert.rejects(loadTokenClassifier(xlmr.dir, { backend: "wasm", device: "cuda" }), (e) => {
    assert.ok(e instanceof CompressorLoadError);
    assert.match(e.message, /device "cuda" with the WebAssembly ONNX Runtime/);
    return true;
  });
  await assert.rejects(loadTokenClassifier(xlmr.dir, { device: "tpu" as "cpu" }), TypeError);
});

Deno.test("loadTokenClassifier() reports a missing ONNX file, tokenizer or model source clearly", async () => {
  const empty = join(dir, "no_onnx");
  await Deno.mkdir(empty, { recursive: true });
  for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json"]) {
    await Deno.copyFile(join(xlmr.dir, f), join(empty, f));
  }
  await assert.rejects(loadTokenClassifier(empty), (e) => {
    assert.ok(e instanceof CompressorLoadError);
    assert.match(e.message, /there is no onnx\/model\.onnx/);
    return true;
  });
  await assert.rejects(loadTokenClassifier(empty, { dtype: "q8" }), /no onnx\/model_quantized\.onnx/);
  await Deno.remove(join(empty, "tokenizer.json"));
  await assert.rejects(loadTokenClassifier(empty), /Cannot load the classifier's tokenizer/);
  await assert.rejects(loadTokenClassifier(join(dir, "does/not/exist")), ModelSourceError);
  await assert.rejects(loadTokenClassifier(xlmr.dir, { backend: "gpu" as "wasm" }), TypeError);
  await assert.rejects(loadTokenClassifier(xlmr.dir, { maxBatchSize: 0 }), RangeError);
});

Deno.test("isClassifierFile() selects configs, tokenizer files and the ONNX weights of the dtype", () => {
  assert.ok(isClassifierFile("config.json", "fp32"));
  assert.ok(isClassifierFile("tokenizer.json", "fp32"));
  assert.ok(isClassifierFile("onnx/model.onnx", "fp32"));
  assert.ok(isClassifierFile("onnx/model.onnx_data", "fp32"));
  assert.ok(isClassifierFile("onnx/model.onnx_data_2", "fp32"));
  assert.ok(isClassifierFile("onnx/model_quantized.onnx", "q8"));
  assert.ok(!isClassifierFile("onnx/model_quantized.onnx", "fp32"));
  assert.ok(!isClassifierFile("model.safetensors", "fp32"));
  assert.ok(!isClassifierFile("onnx/model_fp16.onnx", "fp32"));
});

Deno.test("loadTokenClassifier() downloads a repo id's ONNX files into the Hugging Face cache", async () => {
  const repo = "edgemix-test/tiny-lingua";
  const commit = "89abcdef0123456789abcdef0123456789abcdef";
  const files = new Map<string, Uint8Array>();
  for (const name of ["config.json", "tokenizer.json", "tokenizer_config.json", "onnx/model.onnx"]) {
    files.set(name, await Deno.readFile(join(xlmr.dir, name)));
  }
  files.set("onnx/model_fp16.onnx", new Uint8Array(64));
  files.set("README.md", new TextEncoder().encode("# tiny\n"));
  const gitSha = (b: Uint8Array) =>
    createHash("sha1").update(new TextEncoder().encode(`blob ${b.length}\0`)).update(b).digest("hex");
  const requested: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    requested.push(path);
    if (path === `/api/models/${repo}/revision/main`) {
      return Response.json({
        id: repo,
        sha: commit,
        siblings: [...files].map(([name, b]) => ({ rfilename: name, size: b.length, blobId: gitSha(b) })),
      });
    }
    const prefix = `/${repo}/resolve/${commit}/`;
    const bytes = path.startsWith(prefix) ? files.get(path.slice(prefix.length)) : undefined;
    if (!bytes) return new Response("not found", { status: 404 });
    return new Response(bytes.slice(), { headers: { ETag: `"${gitSha(bytes)}"` } });
  });
  try {
    const cacheDir = join(dir, "hub");
    const endpoint = `http://127.0.0.1:${server.addr.port}`;
    const clf = await loadTokenClassifier(repo, {
      hub: { cacheDir, endpoint, progress: false },
      progress: false,
    });
    assert.equal(clf.dir, join(cacheDir, "models--edgemix-test--tiny-lingua", "snapshots", commit));
    const p = await clf.keepProbabilities([encodeChunk("the project", clf.tokenizer, 512)]);
    assert.equal(p[0].length, 4);
    await clf.dispose();
    const fetched = requested.filter((r) => r.startsWith(`/${repo}/resolve/`)).map((r) =>
      r.split("/").slice(5).join("/")
    );
    assert.deepEqual(fetched.sort(), [
      "config.json",
      "onnx/model.onnx",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);
  } finally {
    await server.shutdown();
  }
});
