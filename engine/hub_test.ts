import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  defaultHubCacheDir,
  DownloadError,
  isModelFile,
  ModelSourceError,
  parseRepoId,
  repoCacheDir,
  resolveModelSource,
} from "./hub.ts";
import type { ProgressEvent } from "./progress.ts";

const FIXTURE_DIR = fileURLToPath(new URL("../fixtures/models/olmoe", import.meta.url));
const REPO = "edgemix-test/tiny-olmoe";
const COMMIT = "0123456789abcdef0123456789abcdef01234567";
const MODEL = "model.safetensors";

/** A file of the emulated repository. */
interface RepoFile {
  name: string;
  bytes: Uint8Array;
  sha256: string;
  /** The git blob id: what the hub sends as ETag for files not in LFS. */
  gitSha: string;
  lfs: boolean;
}

/** What the emulated hub does; tests change it between calls. */
interface HubState {
  /** Answer 401 to requests without `Authorization: Bearer {token}`. */
  token?: string;
  /** How many listing requests get a 503 before one succeeds. */
  listing503s?: number;
  /** Cut the body of model.safetensors after this many bytes, once. */
  cutAfter?: number;
  /** Added to the size the listing gives model.safetensors. */
  sizeLie?: number;
  /** Answer Range requests with the whole file (200). */
  ignoreRange?: boolean;
  /** List model.safetensors with a wrong sha256. */
  shaLie?: boolean;
  /** Files added to the repository. */
  extra?: RepoFile[];
  /** Files left out of the repository. */
  omit?: string[];
}

interface Recorded {
  path: string;
  range: string | null;
  auth: string | null;
  status: number;
}

interface Hub {
  endpoint: string;
  state: HubState;
  requests: Recorded[];
  files: RepoFile[];
  /** Requests for file contents (resolve and CDN), not listings. */
  fileRequests(): Recorded[];
}

const repoFiles = await loadRepoFiles();

async function loadRepoFiles(): Promise<RepoFile[]> {
  const entries: { name: string; bytes: Uint8Array }[] = [];
  for await (const entry of Deno.readDir(FIXTURE_DIR)) {
    if (entry.isFile) {
      entries.push({ name: entry.name, bytes: await Deno.readFile(join(FIXTURE_DIR, entry.name)) });
    }
  }
  // Files a model does not need, which must not be downloaded.
  entries.push({ name: "README.md", bytes: new TextEncoder().encode("# tiny olmoe\n") });
  entries.push({ name: "pytorch_model.bin", bytes: new Uint8Array(4096).fill(7) });
  entries.push({ name: "onnx/model.onnx", bytes: new Uint8Array(1024).fill(9) });
  entries.sort((a, b) => a.name.localeCompare(b.name));
  return entries.map(({ name, bytes }) => repoFile(name, bytes));
}

function repoFile(name: string, bytes: Uint8Array): RepoFile {
  const header = new TextEncoder().encode(`blob ${bytes.length}\0`);
  const git = createHash("sha1").update(header).update(bytes).digest("hex");
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  return { name, bytes, sha256, gitSha: git, lfs: name.endsWith(".safetensors") || name.endsWith(".bin") };
}

function serveBytes(req: Request, bytes: Uint8Array, headers: Headers, state: HubState): Response {
  const range = req.headers.get("range");
  const m = range && !state.ignoreRange ? /^bytes=(\d+)-$/.exec(range) : null;
  if (m) {
    const start = Number(m[1]);
    if (start >= bytes.length) {
      headers.set("Content-Range", `bytes */${bytes.length}`);
      return new Response(null, { status: 416, headers });
    }
    headers.set("Content-Range", `bytes ${start}-${bytes.length - 1}/${bytes.length}`);
    return new Response(bytes.slice(start), { status: 206, headers });
  }
  return new Response(bytes.slice(), { status: 200, headers });
}

/** A body that ends after `n` bytes while Content-Length promises more: the client sees the connection drop. */
function cutBody(bytes: Uint8Array, n: number): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(controller) {
      controller.enqueue(bytes.slice(0, n));
      controller.close();
    },
  });
}

function handle(req: Request, hub: Hub): Response {
  const url = new URL(req.url);
  const path = decodeURIComponent(url.pathname);
  const { state } = hub;
  const files = [...hub.files, ...state.extra ?? []].filter((f) => !state.omit?.includes(f.name));
  const authorized = !state.token || req.headers.get("authorization") === `Bearer ${state.token}`;
  const listing = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/(.+)$/.exec(path);
  const resolve = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(path);
  const cdn = /^\/cdn\/([0-9a-f]{64})$/.exec(path);
  if (listing || resolve) {
    if (!authorized) return new Response("unauthorized", { status: 401 });
    const [, repo, revision] = (listing ?? resolve)!;
    if (repo !== REPO) {
      return new Response("not found", { status: 404, headers: { "X-Error-Code": "RepoNotFound" } });
    }
    if (revision !== "main" && revision !== COMMIT) {
      return new Response("not found", { status: 404, headers: { "X-Error-Code": "RevisionNotFound" } });
    }
  }
  if (listing) {
    if (state.listing503s) {
      state.listing503s--;
      return new Response("busy", { status: 503 });
    }
    assert.equal(url.searchParams.get("blobs"), "true");
    return Response.json({
      id: REPO,
      sha: COMMIT,
      siblings: files.map((f) => {
        const size = f.bytes.length + (f.name === MODEL ? state.sizeLie ?? 0 : 0);
        const sha256 = f.name === MODEL && state.shaLie ? "0".repeat(64) : f.sha256;
        return f.lfs
          ? { rfilename: f.name, size, lfs: { size, sha256, pointerSize: 134 } }
          : { rfilename: f.name, size };
      }),
    });
  }
  if (resolve) {
    const file = files.find((f) => f.name === resolve[3]);
    if (!file) {
      return new Response("not found", { status: 404, headers: { "X-Error-Code": "EntryNotFound" } });
    }
    if (file.lfs) {
      // Like the real hub: LFS files redirect to a CDN, whose ETag is not the sha256.
      return new Response(null, {
        status: 302,
        headers: {
          Location: `/cdn/${file.sha256}`,
          "X-Linked-Etag": `"${file.sha256}"`,
          "X-Linked-Size": String(file.bytes.length),
        },
      });
    }
    return serveBytes(req, file.bytes, new Headers({ ETag: `"${file.gitSha}"` }), state);
  }
  if (cdn) {
    const file = files.find((f) => f.sha256 === cdn[1]) ??
      (state.shaLie ? files.find((f) => f.name === MODEL) : undefined);
    if (!file) return new Response("not found", { status: 404 });
    const headers = new Headers({ ETag: `"cdn-${file.sha256.slice(0, 8)}"`, "Accept-Ranges": "bytes" });
    if (file.name === MODEL && state.cutAfter !== undefined && !req.headers.get("range")) {
      const n = state.cutAfter;
      state.cutAfter = undefined;
      headers.set("Content-Length", String(file.bytes.length));
      return new Response(cutBody(file.bytes, n), { status: 200, headers });
    }
    return serveBytes(req, file.bytes, headers, state);
  }
  return new Response("no route", { status: 404 });
}

/** Runs `fn` against an emulated hub and a fresh cache dir, then shuts the server down and removes the dir. */
async function withHub(state: HubState, fn: (hub: Hub, cacheDir: string) => Promise<void>): Promise<void> {
  const requests: Recorded[] = [];
  const hub: Hub = {
    endpoint: "",
    state,
    requests,
    files: repoFiles,
    fileRequests: () => requests.filter((r) => !r.path.startsWith("/api/")),
  };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const res = handle(req, hub);
    requests.push({
      path: decodeURIComponent(new URL(req.url).pathname),
      range: req.headers.get("range"),
      auth: req.headers.get("authorization"),
      status: res.status,
    });
    return res;
  });
  hub.endpoint = `http://127.0.0.1:${server.addr.port}`;
  const cacheDir = await Deno.makeTempDir({ prefix: "edgemix_hub_test_" });
  try {
    await fn(hub, cacheDir);
  } finally {
    await server.shutdown();
    await Deno.remove(cacheDir, { recursive: true });
  }
}

/** A fetch that fails the test when called: proof that no network is used. */
function noFetch(): Promise<Response> {
  return Promise.reject(new TypeError("network is unreachable (test)"));
}

const NEEDED = repoFiles.filter((f) => isModelFile(f.name)).map((f) => f.name);

async function assertSnapshot(cacheDir: string, dir: string): Promise<void> {
  const repoDir = repoCacheDir(cacheDir, REPO);
  assert.equal(dir, join(repoDir, "snapshots", COMMIT));
  assert.equal(await Deno.readTextFile(join(repoDir, "refs", "main")), COMMIT);
  const present: string[] = [];
  for await (const e of Deno.readDir(dir)) present.push(e.name);
  assert.deepEqual(present.sort(), [...NEEDED].sort());
  for (const file of repoFiles.filter((f) => NEEDED.includes(f.name))) {
    const link = join(dir, file.name);
    assert.ok((await Deno.lstat(link)).isSymlink, `${file.name} is a symlink`);
    const etag = file.lfs ? file.sha256 : file.gitSha;
    assert.equal(await Deno.readLink(link), `../../blobs/${etag}`);
    assert.deepEqual(await Deno.readFile(link), file.bytes, `${file.name} has the original bytes`);
  }
  for await (const e of Deno.readDir(join(repoDir, "blobs"))) {
    assert.ok(!e.name.endsWith(".incomplete"), `no ${e.name} left behind`);
  }
}

Deno.test("parseRepoId accepts owner/name[@revision] and rejects paths", () => {
  assert.deepEqual(parseRepoId("allenai/OLMoE-1B-7B-0924"), { repo: "allenai/OLMoE-1B-7B-0924" });
  assert.deepEqual(parseRepoId("a/b@refs/pr/1"), { repo: "a/b", revision: "refs/pr/1" });
  for (const bad of ["model", "./a/b", "/abs/path", "a/b/c", "a/..", "a/b@", "a b/c"]) {
    assert.equal(parseRepoId(bad), undefined, bad);
  }
});

Deno.test("isModelFile keeps configs, tokenizer, templates and safetensors, skips the rest", () => {
  for (
    const name of ["config.json", "tokenizer.json", "chat_template.jinja", "model-00001-of-00002.safetensors"]
  ) {
    assert.ok(isModelFile(name), name);
  }
  for (
    const name of [
      "pytorch_model.bin",
      "README.md",
      "onnx/model.onnx",
      "golden.json",
      "sub/model.safetensors",
    ]
  ) {
    assert.ok(!isModelFile(name), name);
  }
});

Deno.test("defaultHubCacheDir follows HF_HUB_CACHE, HF_HOME, then HOME", () => {
  const names = ["HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME"];
  const saved = new Map(names.map((n) => [n, Deno.env.get(n)]));
  try {
    for (const n of names) Deno.env.delete(n);
    Deno.env.set("HOME", "/home/u");
    assert.equal(defaultHubCacheDir(), "/home/u/.cache/huggingface/hub");
    Deno.env.set("HF_HOME", "/hf");
    assert.equal(defaultHubCacheDir(), "/hf/hub");
    Deno.env.set("HF_HUB_CACHE", "/cache");
    assert.equal(defaultHubCacheDir(), "/cache");
  } finally {
    for (const [n, v] of saved) v === undefined ? Deno.env.delete(n) : Deno.env.set(n, v);
  }
});

Deno.test("a local directory is returned unchanged without network; a missing path is a ModelSourceError", async () => {
  assert.equal(await resolveModelSource(FIXTURE_DIR, { fetch: noFetch }), FIXTURE_DIR);
  const missing = join(FIXTURE_DIR, "no", "such", "dir");
  await assert.rejects(resolveModelSource(missing, { fetch: noFetch }), (e) => {
    assert.ok(e instanceof ModelSourceError);
    assert.equal(e.source, missing);
    assert.match(e.message, /does not exist and is not a Hugging Face repo id/);
    return true;
  });
  await assert.rejects(
    resolveModelSource(join(FIXTURE_DIR, "config.json"), { fetch: noFetch }),
    /it is a file, not a directory/,
  );
});

Deno.test("a fresh download builds the Hugging Face cache layout; a second call requests no file", async () => {
  await withHub({}, async (hub, cacheDir) => {
    const options = { cacheDir, endpoint: hub.endpoint, progress: false };
    const dir = await resolveModelSource(REPO, options);
    await assertSnapshot(cacheDir, dir);
    const fileRequests = hub.fileRequests();
    // Each needed file is fetched once; LFS files through the CDN redirect.
    const resolved = fileRequests.filter((r) => r.path.includes("/resolve/")).map((r) =>
      r.path.split("/").pop()
    );
    assert.deepEqual(resolved.sort(), [...NEEDED].sort());
    assert.ok(
      fileRequests.every((r) =>
        r.path.startsWith(`/${REPO}/resolve/${COMMIT}/`) || r.path.startsWith("/cdn/")
      ),
    );
    assert.equal(fileRequests.filter((r) => r.path.startsWith("/cdn/")).length, 2);

    const before = hub.fileRequests().length;
    assert.equal(await resolveModelSource(REPO, options), dir);
    assert.equal(hub.fileRequests().length, before, "the second call makes no file requests");
    assert.equal(await resolveModelSource(`${REPO}@${COMMIT}`, options), dir);
    assert.equal(hub.fileRequests().length, before);
  });
});

Deno.test("concurrent calls share one download per file", async () => {
  await withHub({}, async (hub, cacheDir) => {
    const options = { cacheDir, endpoint: hub.endpoint, progress: false };
    const [a, b] = await Promise.all([resolveModelSource(REPO, options), resolveModelSource(REPO, options)]);
    assert.equal(a, b);
    await assertSnapshot(cacheDir, a);
    const resolved = hub.fileRequests().filter((r) => r.path.includes("/resolve/"));
    assert.equal(resolved.length, NEEDED.length);
  });
});

Deno.test("a body cut short is resumed with a Range request on retry", async () => {
  const cutAfter = 300_000;
  await withHub({ cutAfter }, async (hub, cacheDir) => {
    const dir = await resolveModelSource(REPO, { cacheDir, endpoint: hub.endpoint, progress: false });
    await assertSnapshot(cacheDir, dir);
    const cdn = hub.fileRequests().filter((r) => r.path.startsWith("/cdn/") && r.path.endsWith(sha(MODEL)));
    assert.equal(cdn.length, 2);
    assert.equal(cdn[0].range, null);
    const m = /^bytes=(\d+)-$/.exec(cdn[1].range ?? "");
    assert.ok(m, `the retry sends a Range header (got ${cdn[1].range})`);
    assert.ok(Number(m[1]) > 0 && Number(m[1]) <= cutAfter, `resumes after the bytes received (${m[1]})`);
    assert.equal(cdn[1].status, 206);
  });
});

Deno.test("a .incomplete left by an earlier run is resumed; a server ignoring Range restarts it", async () => {
  for (const ignoreRange of [false, true]) {
    await withHub({ ignoreRange }, async (hub, cacheDir) => {
      const blobs = join(repoCacheDir(cacheDir, REPO), "blobs");
      await Deno.mkdir(blobs, { recursive: true });
      const model = repoFiles.find((f) => f.name === MODEL)!;
      // A corrupt tail would fail the sha256 check if it were kept by mistake.
      const partial = model.bytes.slice(0, 5000);
      if (ignoreRange) partial.fill(0xff, 4000);
      await Deno.writeFile(join(blobs, `${model.sha256}.incomplete`), partial);
      const dir = await resolveModelSource(REPO, { cacheDir, endpoint: hub.endpoint, progress: false });
      await assertSnapshot(cacheDir, dir);
      const cdn = hub.fileRequests().filter((r) => r.path === `/cdn/${model.sha256}`);
      assert.equal(cdn.length, 1);
      assert.equal(cdn[0].range, "bytes=5000-");
      assert.equal(cdn[0].status, ignoreRange ? 200 : 206);
    });
  }
});

Deno.test("a size other than the listed one is a DownloadError and leaves no blob behind", async () => {
  await withHub({ sizeLie: 1000 }, async (hub, cacheDir) => {
    const model = repoFiles.find((f) => f.name === MODEL)!;
    await assert.rejects(
      resolveModelSource(REPO, { cacheDir, endpoint: hub.endpoint, progress: false }),
      (e) => {
        assert.ok(e instanceof DownloadError, String(e));
        assert.equal(e.file, MODEL);
        assert.equal(e.expected, model.bytes.length + 1000);
        assert.equal(e.actual, model.bytes.length);
        assert.match(
          e.message,
          /^Cannot download model\.safetensors: received \d+ bytes where \d+ were expected$/,
        );
        return true;
      },
    );
    const repoDir = repoCacheDir(cacheDir, REPO);
    const blobs: string[] = [];
    for await (const e of Deno.readDir(join(repoDir, "blobs"))) blobs.push(e.name);
    assert.ok(
      !blobs.some((b) => b.startsWith(model.sha256)),
      `no blob or .incomplete of the model: ${blobs}`,
    );
    await assert.rejects(Deno.lstat(join(repoDir, "snapshots", COMMIT, MODEL)), Deno.errors.NotFound);
    await assert.rejects(Deno.stat(join(repoDir, "refs", "main")), Deno.errors.NotFound);
  });
});

Deno.test("a sha256 other than the listed one is a DownloadError and leaves no blob behind", async () => {
  await withHub({ shaLie: true }, async (hub, cacheDir) => {
    await assert.rejects(
      resolveModelSource(REPO, { cacheDir, endpoint: hub.endpoint, progress: false }),
      (e) =>
        e instanceof DownloadError && e.file === MODEL &&
        /its sha256 is [0-9a-f]{64} where the hub lists 0+$/.test(e.message),
    );
    const blobs: string[] = [];
    for await (const e of Deno.readDir(join(repoCacheDir(cacheDir, REPO), "blobs"))) blobs.push(e.name);
    assert.ok(
      !blobs.some((b) => b.startsWith("0".repeat(64))),
      `no blob or .incomplete of the model: ${blobs}`,
    );
  });
});

Deno.test("a finished .incomplete is checked and renamed without a request; a corrupt one is discarded", async () => {
  for (const corrupt of [false, true]) {
    await withHub({}, async (hub, cacheDir) => {
      const blobs = join(repoCacheDir(cacheDir, REPO), "blobs");
      await Deno.mkdir(blobs, { recursive: true });
      const model = repoFiles.find((f) => f.name === MODEL)!;
      const bytes = model.bytes.slice();
      if (corrupt) bytes[bytes.length - 1] ^= 1;
      await Deno.writeFile(join(blobs, `${model.sha256}.incomplete`), bytes);
      const options = { cacheDir, endpoint: hub.endpoint, progress: false };
      if (corrupt) {
        await assert.rejects(resolveModelSource(REPO, options), /sha256/);
        await assert.rejects(Deno.stat(join(blobs, `${model.sha256}.incomplete`)), Deno.errors.NotFound);
        // The next call downloads it afresh.
        await assertSnapshot(cacheDir, await resolveModelSource(REPO, options));
      } else {
        await assertSnapshot(cacheDir, await resolveModelSource(REPO, options));
        assert.equal(
          hub.fileRequests().filter((r) => r.path.startsWith("/cdn/")).length,
          1,
          "only golden.safetensors",
        );
      }
    });
  }
});

Deno.test("by default, consolidated weights beside an index are skipped and a repo without weights is refused", async () => {
  const index = repoFile(
    "model.safetensors.index.json",
    new TextEncoder().encode(JSON.stringify({ weight_map: { "a.weight": MODEL } })),
  );
  const consolidated = repoFile("consolidated.safetensors", new Uint8Array(64).fill(3));
  await withHub({ extra: [index, consolidated] }, async (hub, cacheDir) => {
    const dir = await resolveModelSource(REPO, { cacheDir, endpoint: hub.endpoint, progress: false });
    const present: string[] = [];
    for await (const e of Deno.readDir(dir)) present.push(e.name);
    assert.ok(present.includes(index.name) && present.includes(MODEL), present.join());
    assert.ok(!present.includes(consolidated.name));
    // The offline check follows the index: its shard must be there.
    assert.equal(await resolveModelSource(REPO, { cacheDir, offline: true }), dir);
  });
  await withHub({ omit: [MODEL, "golden.safetensors"] }, async (hub, cacheDir) => {
    await assert.rejects(
      resolveModelSource(REPO, { cacheDir, endpoint: hub.endpoint, progress: false }),
      (e) => e instanceof ModelSourceError && /the repository has no safetensors weights$/.test(e.message),
    );
    assert.equal(hub.fileRequests().length, 0);
  });
});

Deno.test("an unknown repo or revision is a ModelSourceError", async () => {
  await withHub({}, async (hub, cacheDir) => {
    const options = { cacheDir, endpoint: hub.endpoint, progress: false };
    await assert.rejects(resolveModelSource("nobody/nothing", options), (e) => {
      assert.ok(e instanceof ModelSourceError);
      assert.equal(e.source, "nobody/nothing");
      assert.match(
        e.message,
        /^Cannot find nobody\/nothing@main on .*: the repository or revision does not exist$/,
      );
      return true;
    });
    await assert.rejects(
      resolveModelSource(`${REPO}@v9`, options),
      (e) => e instanceof ModelSourceError && /revision v9 does not exist/.test(e.message),
    );
    assert.equal(hub.fileRequests().length, 0);
  });
});

Deno.test("401 is a DownloadError about gated or private repos; a token is sent as Bearer", async () => {
  await withHub({ token: "hf_secret" }, async (hub, cacheDir) => {
    const options = { cacheDir, endpoint: hub.endpoint, progress: false };
    await assert.rejects(resolveModelSource(REPO, { ...options, token: "" }), (e) => {
      assert.ok(e instanceof DownloadError);
      assert.equal(e.status, 401);
      assert.match(e.message, /gated or private/);
      assert.match(e.message, /HF_TOKEN/);
      return true;
    });
    const dir = await resolveModelSource(REPO, { ...options, token: "hf_secret" });
    await assertSnapshot(cacheDir, dir);
    const withToken = hub.requests.filter((r) => r.auth === "Bearer hf_secret");
    assert.ok(
      withToken.some((r) => r.path.includes("/resolve/")) &&
        withToken.some((r) => r.path.startsWith("/api/")),
    );
  });
});

Deno.test("5xx answers are retried", async () => {
  await withHub({ listing503s: 2 }, async (hub, cacheDir) => {
    const dir = await resolveModelSource(REPO, {
      cacheDir,
      endpoint: hub.endpoint,
      progress: false,
      retries: 2,
    });
    await assertSnapshot(cacheDir, dir);
    assert.equal(hub.requests.filter((r) => r.status === 503).length, 2);
  });
  await withHub({ listing503s: 5 }, async (hub, cacheDir) => {
    await assert.rejects(
      resolveModelSource(REPO, { cacheDir, endpoint: hub.endpoint, progress: false, retries: 1 }),
      (e) => e instanceof DownloadError && e.status === 503 && /not in the cache/.test(e.message),
    );
  });
});

Deno.test("offline or unreachable, a complete cached snapshot is used without requests", async () => {
  await withHub({}, async (hub, cacheDir) => {
    const options = { cacheDir, endpoint: hub.endpoint, progress: false };
    const dir = await resolveModelSource(REPO, options);
    const count = hub.requests.length;
    assert.equal(await resolveModelSource(REPO, { ...options, offline: true, fetch: noFetch }), dir);
    assert.equal(await resolveModelSource(REPO, { ...options, fetch: noFetch, retries: 0 }), dir);
    const saved = Deno.env.get("HF_HUB_OFFLINE");
    Deno.env.set("HF_HUB_OFFLINE", "1");
    try {
      assert.equal(await resolveModelSource(REPO, { ...options, fetch: noFetch }), dir);
    } finally {
      saved === undefined ? Deno.env.delete("HF_HUB_OFFLINE") : Deno.env.set("HF_HUB_OFFLINE", saved);
    }
    assert.equal(hub.requests.length, count, "no request reached the hub");
    // A snapshot with a dangling link is not complete.
    await Deno.remove(join(repoCacheDir(cacheDir, REPO), "blobs", sha(MODEL)));
    await assert.rejects(resolveModelSource(REPO, { ...options, offline: true }), ModelSourceError);
  });
});

Deno.test("offline or unreachable with nothing cached is an error", async () => {
  const cacheDir = await Deno.makeTempDir({ prefix: "edgemix_hub_test_" });
  try {
    await assert.rejects(resolveModelSource(REPO, { cacheDir, offline: true, fetch: noFetch }), (e) => {
      assert.ok(e instanceof ModelSourceError);
      assert.match(e.message, /^Cannot load edgemix-test\/tiny-olmoe@main offline: it is not/);
      return true;
    });
    await assert.rejects(resolveModelSource(REPO, { cacheDir, fetch: noFetch, retries: 0 }), (e) => {
      assert.ok(e instanceof DownloadError);
      assert.match(
        e.message,
        /^Cannot reach .*network is unreachable \(test\) \(and .* is not in the cache\)$/,
      );
      return true;
    });
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
});

Deno.test("a files filter decides alone which files are downloaded", async () => {
  await withHub({}, async (hub, cacheDir) => {
    const files = (name: string) => name === "config.json" || name === "README.md";
    const dir = await resolveModelSource(REPO, { cacheDir, endpoint: hub.endpoint, progress: false, files });
    const present: string[] = [];
    for await (const e of Deno.readDir(dir)) present.push(e.name);
    assert.deepEqual(present.sort(), ["README.md", "config.json"]);
  });
});

Deno.test("a progress sink sees increasing byte counts and a finished event per file", async () => {
  await withHub({}, async (hub, cacheDir) => {
    const events: ProgressEvent[] = [];
    const progress = { onProgress: (e: ProgressEvent) => events.push({ ...e }) };
    await resolveModelSource(REPO, { cacheDir, endpoint: hub.endpoint, progress });
    const model = events.filter((e) => e.label === MODEL);
    const size = repoFiles.find((f) => f.name === MODEL)!.bytes.length;
    assert.ok(model.length >= 3, `several events (${model.length})`);
    for (let i = 1; i < model.length - 1; i++) assert.ok(model[i].done > model[i - 1].done);
    assert.ok(model.every((e) => e.total === size));
    assert.deepEqual(model.at(-1), { label: MODEL, done: size, total: size, finished: true });
    assert.equal(model.filter((e) => e.finished).length, 1);
    assert.deepEqual(
      [...new Set(events.filter((e) => e.finished).map((e) => e.label))].sort(),
      [...NEEDED].sort(),
    );
  });
});

function sha(name: string): string {
  return repoFiles.find((f) => f.name === name)!.sha256;
}
