import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));

Deno.test("the examples of docs/library.md and of the library's JSDoc run (deno test --doc)", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "test",
      "-A",
      "--doc",
      "--no-check=remote",
      "docs/library.md",
      "pipeline.ts",
      "engine/scheduler.ts",
    ],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text.slice(-3000));
  assert.match(text, /ok \| \d+ passed/);
});
