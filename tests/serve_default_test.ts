/**
 * `main.ts serve` without `--db`: the default knowledge base in `$EDGEMIX_HOME/db` is filled with the world's
 * documents on first start, answers retrieve from it, and a restart does not ingest again; `--db none` serves
 * without a store. The model is the default reader (fixtures/models/reader): a fresh fact, which only the
 * knowledge base holds, is answered from the retrieved passage.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { exactMatch, readWorldQuestions } from "../tools/world/mod.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const PERMISSIONS = [
  "--allow-net",
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-sys",
  "--allow-ffi",
];

/** A running `main.ts serve` child. */
interface Server {
  base: string;
  /** Stops it with SIGTERM; resolves to its exit code, stdout and stderr. */
  stop(): Promise<{ code: number; stdout: string; stderr: string }>;
}

/** Starts `main.ts serve --port 0 --backend cpu …args` and waits until /health answers 200. */
async function startServer(args: string[], env: Record<string, string>): Promise<Server> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...PERMISSIONS, "main.ts", "serve", "--port", "0", "--backend", "cpu", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", EDGEMIX_MAX_TOKENS: "16", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // The test must not hang if the server never gets ready or never stops.
  const killer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stdout = "";
  const finish = async () => {
    for (let r = await reader.read(); !r.done; r = await reader.read()) stdout += r.value;
    const status = await child.status;
    clearTimeout(killer);
    return { code: status.code, stdout, stderr: await stderr };
  };
  try {
    let base: string | undefined;
    while (!base) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`The server exited before listening:\n${stdout}\n${await stderr}`);
      stdout += value;
      base = /listening on (http:\/\/127\.0\.0\.1:\d+\/)/.exec(stdout)?.[1];
    }
    // Keep reading stdout so the child never blocks on a full pipe.
    const rest = finish();
    for (;;) {
      const res: Response = await fetch(new URL("health", base));
      await res.body?.cancel();
      if (res.status === 200) break;
      assert.equal(res.status, 503, "health answers 503 while loading");
      const exited = await Promise.race([
        rest.then(() => true),
        new Promise<boolean>((r) => setTimeout(r, 100, false)),
      ]);
      if (exited) throw new Error(`The server exited before it was ready:\n${(await rest).stdout}`);
    }
    return {
      base,
      stop: () => {
        child.kill("SIGTERM");
        return rest;
      },
    };
  } catch (e) {
    child.kill("SIGKILL");
    await reader.cancel().catch(() => {});
    await child.status;
    await stderr;
    clearTimeout(killer);
    throw e;
  }
}

async function ask(base: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(new URL("ask", base), {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: await res.json() };
}

Deno.test("serve fills the default knowledge base on first start and retrieves from it", async () => {
  const home = await Deno.makeTempDir({ prefix: "edgemix-home-test-" });
  try {
    const fresh = (await readWorldQuestions(`${ROOT}fixtures/world`)).filter((q) =>
      q.heldout && q.split === "fresh"
    )
      .slice(0, 10);
    const question = fresh[0];
    const env = { EDGEMIX_HOME: home };

    const first = await startServer([], env);
    let answer;
    try {
      answer = await ask(first.base, { question: question.question });
    } finally {
      const out = await first.stop();
      assert.equal(out.code, 0, out.stderr);
      assert.match(out.stderr, /first start: ingesting 2040 documents of .+documents\.jsonl into .+db/);
      assert.match(out.stderr, /ingested 2040 documents \(2040 chunks\)/);
      assert.match(out.stdout, /knowledge base .+ \(2040 documents\)/);
    }
    assert.equal(answer.status, 200, JSON.stringify(answer.json));
    const ids = (answer.json.retrieved as { id: string }[]).map((r) => r.id);
    assert.ok(ids.includes(question.doc_id), `${question.doc_id} in ${ids}`);
    assert.equal((await Deno.stat(`${home}/db`)).isDirectory, true);

    const second = await startServer([], env);
    let again;
    const answers: string[] = [];
    try {
      again = await ask(second.base, { question: question.question, retrieval: "always" });
      for (const q of fresh) {
        answers.push((await ask(second.base, { question: q.question })).json.answer as string);
      }
    } finally {
      const out = await second.stop();
      assert.equal(out.code, 0, out.stderr);
      assert.doesNotMatch(out.stderr, /ingest/, "a restart does not ingest again");
      assert.match(out.stdout, /knowledge base .+ \(2040 documents\)/);
    }
    assert.equal(again.status, 200);
    assert.ok((again.json.retrieved as { id: string }[]).some((r) => r.id === question.doc_id));
    // The reader answers fresh facts from the retrieved passages (about 9 in 10 in docs/eval.md).
    const right = fresh.filter((q, i) => exactMatch(answers[i], q.answer, q.aliases)).length;
    assert.ok(right >= 7, `${right} of 10 fresh questions answered: ${JSON.stringify(answers)}`);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("serve --db none has no store and writes no data directory", async () => {
  const home = await Deno.makeTempDir({ prefix: "edgemix-home-test-" });
  try {
    const server = await startServer(["--db", "none"], { EDGEMIX_HOME: home });
    let res;
    try {
      res = await ask(server.base, { question: "Who founded Drarnge Company?", retrieval: "always" });
    } finally {
      const out = await server.stop();
      assert.equal(out.code, 0, out.stderr);
      assert.doesNotMatch(out.stdout, /knowledge base/);
    }
    assert.equal(res.status, 422);
    assert.match(JSON.stringify(res.json), /no document store/);
    assert.deepEqual([...Deno.readDirSync(home)], []);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});
