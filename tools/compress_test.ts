import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeTinyClassifier } from "../retrieval/_tiny_classifier.ts";
import { DEFAULT_COMPRESSOR_MODEL } from "../retrieval/compress.ts";
import { parseCommand, splitList } from "./compress.ts";

Deno.test("parseCommand() reads the options of deno task compress", () => {
  const cmd = parseCommand([
    "--rate",
    "0.33",
    "--force-tokens",
    "\\n,.,?,\\,",
    "--force-reserve-digit",
    "--drop-consecutive",
    "--contexts",
    "\\n\\n",
    "--backend",
    "wasm",
    "--json",
    "in.txt",
  ]);
  assert.notEqual(cmd, "help");
  if (cmd === "help") return;
  assert.equal(cmd.file, "in.txt");
  assert.equal(cmd.model, DEFAULT_COMPRESSOR_MODEL);
  assert.equal(cmd.backend, "wasm");
  assert.equal(cmd.contexts, "\n\n");
  assert.equal(cmd.output, "json");
  assert.deepEqual(cmd.options, {
    rate: 0.33,
    forceTokens: ["\n", ".", "?", ","],
    forceReserveDigit: true,
    dropConsecutive: true,
    useContextLevelFilter: true,
  });
  assert.equal(parseCommand(["-h"]), "help");
});

Deno.test("parseCommand() rejects bad values before any model is loaded", () => {
  assert.throws(() => parseCommand(["--rate", "1.5"]), RangeError);
  assert.throws(() => parseCommand(["--rate", "abc"]), TypeError);
  assert.throws(() => parseCommand(["--target-token", "0"]), RangeError);
  assert.throws(() => parseCommand(["--backend", "gpu"]), TypeError);
  assert.throws(() => parseCommand(["--token-to-word", "max"]), TypeError);
  assert.throws(() => parseCommand(["a.txt", "b.txt"]), TypeError);
  assert.throws(() => parseCommand(["--nope"]), TypeError);
});

Deno.test("splitList() splits at commas and understands \\n, \\t and \\,", () => {
  assert.deepEqual(splitList("\\n,.,?,!"), ["\n", ".", "?", "!"]);
  assert.deepEqual(splitList("The answer is,\\t,a\\,b,"), ["The answer is", "\t", "a,b"]);
});

Deno.test("deno task compress prints the compressed text on stdout and statistics on stderr", async () => {
  const dir = await Deno.makeTempDir({ prefix: "compress_cli_test_" });
  try {
    const model = await writeTinyClassifier(join(dir, "model"), "bert");
    const input = join(dir, "in.txt");
    await Deno.writeTextFile(input, "John: the project timeline need make changes. Sarah agree.");
    const root = fileURLToPath(new URL("..", import.meta.url));
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "tools/compress.ts", "--model", model.dir, "--rate", "0.5", input],
      cwd: root,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(stderr);
    assert.equal(code, 0, err);
    const out = new TextDecoder().decode(stdout);
    assert.ok(out.length > 1 && out.length < 60, out);
    assert.match(err, /^\d+ -> \d+ cl100k tokens \(\d+\.\d%\), 1 context kept, (native\/cpu|wasm\/wasm), /m);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
