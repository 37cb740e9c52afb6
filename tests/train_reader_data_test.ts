import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

/** Whether `python3` with numpy runs here (the trainer's data code needs both; torch is not needed). */
async function hasPythonNumpy(): Promise<boolean> {
  try {
    const out = await new Deno.Command("python3", {
      args: ["-c", "import numpy"],
      stdout: "null",
      stderr: "null",
    })
      .output();
    return out.success;
  } catch {
    return false;
  }
}

Deno.test({
  name: "the reader's training data matches the pipeline's prompts (tools/train_reader_data_test.py)",
  ignore: !(await hasPythonNumpy()),
  fn: async () => {
    const out = await new Deno.Command("python3", {
      args: ["tools/train_reader_data_test.py"],
      cwd: root,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, text.slice(-3000));
    assert.match(text, /\nOK\b/);
  },
});
