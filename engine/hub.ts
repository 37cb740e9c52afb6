/**
 * Model sources: a local checkpoint directory, or a Hugging Face repo id (`owner/name[@revision]`) whose model
 * files are downloaded into the Hugging Face cache with the layout huggingface_hub uses, so both share one cache:
 * `models--{owner}--{name}/blobs/{etag}`, `snapshots/{commit}/{file}` (relative symlinks to the blobs) and
 * `refs/{revision}` (the commit sha).
 *
 * @module
 */

import { createHash, type Hash } from "node:crypto";
import { dirname, join, relative } from "node:path";
import { createProgress, type Progress, type ProgressOptions, type ProgressSink } from "./progress.ts";

/** A model source could not be resolved: not a directory, not a repo id, unknown repo, or not cached offline. */
export class ModelSourceError extends Error {
  /** The source as given. */
  readonly source: string;

  /** Makes the error for `source`. */
  constructor(message: string, source: string, options?: { cause?: unknown }) {
    super(message, { cause: options?.cause });
    this.name = "ModelSourceError";
    this.source = source;
  }
}

/** A file could not be downloaded: access denied, a network failure that outlasted the retries, a bad size or hash. */
export class DownloadError extends Error {
  /** The URL requested, when there is one. */
  readonly url: string | undefined;
  /** The repo file concerned, when there is one. */
  readonly file: string | undefined;
  /** The expected size in bytes, when the error is about a size. */
  readonly expected: number | undefined;
  /** The size received, when the error is about a size. */
  readonly actual: number | undefined;
  /** The HTTP status, when the server answered with an error. */
  readonly status: number | undefined;

  /** Makes the error; the options say where and what. */
  constructor(
    message: string,
    options?: {
      url?: string;
      file?: string;
      expected?: number;
      actual?: number;
      status?: number;
      cause?: unknown;
    },
  ) {
    super(message, { cause: options?.cause });
    this.name = "DownloadError";
    this.url = options?.url;
    this.file = options?.file;
    this.expected = options?.expected;
    this.actual = options?.actual;
    this.status = options?.status;
  }
}

/** A failure worth retrying (connection error, 5xx, body ended early); surfaces as a {@link DownloadError}. */
class TransientDownloadError extends DownloadError {}

/** Options of {@link resolveModelSource}. */
export interface HubOptions {
  /** Cache root; default `$HF_HUB_CACHE`, `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub` or `~/.cache/huggingface/hub`. */
  cacheDir?: string;
  /** Branch, tag or commit; default `main` (an `@revision` in the source wins). */
  revision?: string;
  /** Access token sent as `Authorization: Bearer`; default `$HF_TOKEN`. */
  token?: string;
  /** Hub URL; default `$HF_ENDPOINT` or `https://huggingface.co`. */
  endpoint?: string;
  /** Use only the cache; default true when `$HF_HUB_OFFLINE` is "1" or "true". */
  offline?: boolean;
  /** Which repo files to download; when given it decides alone (default {@link isModelFile}). */
  files?: (name: string) => boolean;
  /** false: silent; true: report even when stderr is not a terminal; a sink: send it the events. */
  progress?: boolean | ProgressSink;
  /** The fetch to use (tests); default the global one. */
  fetch?: typeof fetch;
  /** How many times a transient failure is retried, resuming each time; default 3. */
  retries?: number;
}

/** A repo id split into its parts. */
export interface RepoId {
  /** `owner/name`. */
  repo: string;
  /** The revision after `@`, when there is one. */
  revision?: string;
}

/** A file of the repo listing. */
interface RemoteFile {
  name: string;
  size?: number;
  sha256?: string;
  blobId?: string;
}

interface Context {
  source: string;
  repo: string;
  revision: string;
  repoDir: string;
  endpoint: string;
  token: string | undefined;
  fetch: typeof fetch;
  retries: number;
  filter: ((name: string) => boolean) | undefined;
  progress: ProgressOptions;
}

const DEFAULT_ENDPOINT = "https://huggingface.co";
const MODEL_FILES = new Set([
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
  "chat_template.json",
  "model.safetensors.index.json",
  "quantization.json",
]);
const INDEX_FILE = "model.safetensors.index.json";
const REPO_ID = /^([A-Za-z0-9][A-Za-z0-9._-]*)\/([A-Za-z0-9._-]+)$/;
const COMMIT_SHA = /^[0-9a-f]{40}$/;
const SAFE_ETAG = /^[A-Za-z0-9._-]+$/;

/** Downloads in progress in this process, by snapshot path, so that concurrent calls share one download. */
const inflight = new Map<string, Promise<void>>();

/** Resolves `source` (a directory, or a repo id `owner/name[@revision]`) to a local directory holding the checkpoint. */
export async function resolveModelSource(source: string, options: HubOptions = {}): Promise<string> {
  const info = await statOrUndefined(source);
  if (info?.isDirectory) return source;
  const id = parseRepoId(source);
  if (!id) {
    const why = info
      ? "it is a file, not a directory or a Hugging Face repo id (owner/name)"
      : "the path does not exist and is not a Hugging Face repo id (owner/name)";
    throw new ModelSourceError(`Cannot find model ${source}: ${why}`, source);
  }
  const ctx = makeContext(source, id, options);
  if (!isSafeRelativePath(ctx.revision)) {
    throw new ModelSourceError(
      `Cannot use revision ${ctx.revision} of ${ctx.repo}: it is not a valid revision name`,
      source,
    );
  }
  const offline = options.offline ?? isTruthy(env("HF_HUB_OFFLINE"));
  if (offline) {
    const cached = await cachedSnapshot(ctx);
    if (cached) return cached;
    throw new ModelSourceError(
      `Cannot load ${ctx.repo}@${ctx.revision} offline: it is not (completely) in the cache at ${ctx.repoDir}`,
      source,
    );
  }
  try {
    return await downloadSnapshot(ctx);
  } catch (e) {
    if (!(e instanceof TransientDownloadError)) throw e;
    // The hub cannot be reached: a complete cached snapshot of the revision is as good as a fresh one.
    const cached = await cachedSnapshot(ctx);
    if (cached) return cached;
    throw new DownloadError(`${e.message} (and ${ctx.repo}@${ctx.revision} is not in the cache)`, {
      url: e.url,
      file: e.file,
      status: e.status,
      cause: e.cause,
    });
  }
}

/** Splits `owner/name[@revision]`; undefined when `source` is not a repo id. */
export function parseRepoId(source: string): RepoId | undefined {
  const at = source.indexOf("@");
  const repo = at < 0 ? source : source.slice(0, at);
  const revision = at < 0 ? undefined : source.slice(at + 1);
  const m = REPO_ID.exec(repo);
  if (!m || m[2] === "." || m[2] === ".." || revision === "") return undefined;
  if (revision !== undefined && /\s/.test(revision)) return undefined;
  return revision === undefined ? { repo } : { repo, revision };
}

/** Whether a repo file is one a model needs: configs, tokenizer, chat template, top-level `*.safetensors`. */
export function isModelFile(name: string): boolean {
  if (name.includes("/")) return false;
  return MODEL_FILES.has(name) || name.endsWith(".safetensors");
}

/** The cache root: `$HF_HUB_CACHE`, `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub` or `~/.cache/huggingface/hub`. */
export function defaultHubCacheDir(): string {
  const hubCache = env("HF_HUB_CACHE");
  if (hubCache) return hubCache;
  const hfHome = env("HF_HOME");
  if (hfHome) return join(hfHome, "hub");
  const xdg = env("XDG_CACHE_HOME");
  if (xdg) return join(xdg, "huggingface", "hub");
  const home = env("HOME") ?? env("USERPROFILE");
  if (!home) {
    throw new Error(
      "Cannot locate the Hugging Face cache: HOME is not set; set HF_HUB_CACHE or pass cacheDir",
    );
  }
  return join(home, ".cache", "huggingface", "hub");
}

/** The cache directory of `repo` (`owner/name`) under `cacheDir`: `models--owner--name`. */
export function repoCacheDir(cacheDir: string, repo: string): string {
  return join(cacheDir, `models--${repo.replace("/", "--")}`);
}

function makeContext(source: string, id: RepoId, options: HubOptions): Context {
  const progress: ProgressOptions = typeof options.progress === "object"
    ? { sink: options.progress }
    : options.progress === undefined
    ? {}
    : { enabled: options.progress };
  return {
    source,
    repo: id.repo,
    revision: id.revision ?? options.revision ?? "main",
    repoDir: repoCacheDir(options.cacheDir ?? defaultHubCacheDir(), id.repo),
    endpoint: (options.endpoint ?? env("HF_ENDPOINT") ?? DEFAULT_ENDPOINT).replace(/\/+$/, ""),
    token: options.token ?? env("HF_TOKEN"),
    fetch: options.fetch ?? globalThis.fetch,
    retries: Math.max(0, options.retries ?? 3),
    filter: options.files,
    progress,
  };
}

async function downloadSnapshot(ctx: Context): Promise<string> {
  const listing = await withRetries(ctx, () => fetchListing(ctx));
  const files = selectFiles(ctx, listing.files);
  const snapshot = join(ctx.repoDir, "snapshots", listing.sha);
  for (const file of files) await ensureFile(ctx, listing.sha, snapshot, file);
  // The ref moves only once the snapshot is complete, so that it always names a usable snapshot offline.
  if (ctx.revision !== listing.sha) await writeAtomic(join(ctx.repoDir, "refs", ctx.revision), listing.sha);
  return snapshot;
}

async function fetchListing(ctx: Context): Promise<{ sha: string; files: RemoteFile[] }> {
  const url = `${ctx.endpoint}/api/models/${ctx.repo}/revision/${
    encodeURIComponent(ctx.revision)
  }?blobs=true`;
  const res = await request(ctx, url, authHeaders(ctx), undefined);
  if (!res.ok) {
    await res.body?.cancel();
    throw httpError(ctx, res, url, undefined);
  }
  let text: string;
  try {
    text = await res.text();
  } catch (e) {
    throw new TransientDownloadError(`Cannot list ${ctx.repo}: the connection ended early (${message(e)})`, {
      url,
      cause: e,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new DownloadError(`Cannot list ${ctx.repo}: the hub answered something other than JSON`, {
      url,
      cause: e,
    });
  }
  return parseListing(ctx, json, url);
}

function parseListing(ctx: Context, json: unknown, url: string): { sha: string; files: RemoteFile[] } {
  const body = json as { sha?: unknown; siblings?: unknown };
  if (typeof body?.sha !== "string" || !COMMIT_SHA.test(body.sha) || !Array.isArray(body.siblings)) {
    throw new DownloadError(`Cannot list ${ctx.repo}: the listing has no commit sha or no file list`, {
      url,
    });
  }
  const files: RemoteFile[] = [];
  for (const entry of body.siblings as unknown[]) {
    const s = entry as { rfilename?: unknown; size?: unknown; blobId?: unknown; lfs?: unknown };
    if (typeof s?.rfilename !== "string" || !isSafeRelativePath(s.rfilename)) continue;
    const lfs = s.lfs as { size?: unknown; sha256?: unknown } | undefined;
    const file: RemoteFile = { name: s.rfilename };
    const size = typeof lfs?.size === "number" ? lfs.size : s.size;
    if (typeof size === "number" && Number.isSafeInteger(size) && size >= 0) file.size = size;
    if (typeof lfs?.sha256 === "string" && /^[0-9a-f]{64}$/i.test(lfs.sha256)) {
      file.sha256 = lfs.sha256.toLowerCase();
    }
    if (typeof s.blobId === "string" && SAFE_ETAG.test(s.blobId)) file.blobId = s.blobId;
    files.push(file);
  }
  return { sha: body.sha, files };
}

function selectFiles(ctx: Context, files: RemoteFile[]): RemoteFile[] {
  if (ctx.filter) return files.filter((f) => ctx.filter!(f.name));
  let chosen = files.filter((f) => isModelFile(f.name));
  // Mistral-style repos ship the weights twice: sharded with an index, and as consolidated*.safetensors.
  if (chosen.some((f) => f.name === INDEX_FILE)) {
    chosen = chosen.filter((f) => !/^consolidated.*\.safetensors$/.test(f.name));
  }
  const names = new Set(chosen.map((f) => f.name));
  const missing = !names.has("config.json")
    ? "config.json"
    : !chosen.some((f) => f.name.endsWith(".safetensors"))
    ? "safetensors weights"
    : undefined;
  if (missing) {
    throw new ModelSourceError(
      `Cannot use ${ctx.repo}@${ctx.revision} as a model: the repository has no ${missing}`,
      ctx.source,
    );
  }
  return chosen;
}

async function ensureFile(ctx: Context, commit: string, snapshot: string, file: RemoteFile): Promise<void> {
  const link = join(snapshot, file.name);
  if (await isCompleteFile(link, file.size)) return;
  let pending = inflight.get(link);
  if (!pending) {
    pending = fetchIntoCache(ctx, commit, link, file).finally(() => inflight.delete(link));
    inflight.set(link, pending);
  }
  await pending;
}

async function fetchIntoCache(ctx: Context, commit: string, link: string, file: RemoteFile): Promise<void> {
  const blobs = join(ctx.repoDir, "blobs");
  await Deno.mkdir(blobs, { recursive: true });
  // LFS files are named by their sha256, others by their git blob id; without a blobId, the ETag tells it.
  const state: DownloadState = { etag: file.sha256 ?? file.blobId, expected: file.size };
  if (state.etag && await isCompleteFile(join(blobs, state.etag), file.size)) {
    await linkSnapshot(join(blobs, state.etag), link);
    return;
  }
  const url = `${ctx.endpoint}/${ctx.repo}/resolve/${commit}/${
    file.name.split("/").map(encodeURIComponent).join("/")
  }`;
  const progress = createProgress(file.name, file.size, ctx.progress);
  try {
    await withRetries(ctx, () => downloadBlob(ctx, url, blobs, file, state, progress));
  } finally {
    progress.done();
  }
  await linkSnapshot(join(blobs, state.etag!), link);
}

interface DownloadState {
  etag: string | undefined;
  expected: number | undefined;
}

/** One attempt at `blobs/{etag}`: resumes `blobs/{etag}.incomplete` when there is one, renames it when complete. */
async function downloadBlob(
  ctx: Context,
  url: string,
  blobs: string,
  file: RemoteFile,
  state: DownloadState,
  progress: Progress,
): Promise<void> {
  let have = 0;
  if (state.etag) {
    const partial = join(blobs, `${state.etag}.incomplete`);
    have = (await statOrUndefined(partial))?.size ?? 0;
    if (state.expected !== undefined && have > state.expected) {
      await removeIfExists(partial);
      have = 0;
    }
    if (state.expected !== undefined && have === state.expected && have > 0) {
      // A previous run got every byte but stopped before the rename.
      await finishBlob(url, blobs, file, state, have, undefined);
      return;
    }
  }
  const headers = authHeaders(ctx);
  if (have > 0) headers.set("Range", `bytes=${have}-`);
  const res = await request(ctx, url, headers, file.name);
  if (res.status === 416) {
    await res.body?.cancel();
    await removeIfExists(join(blobs, `${state.etag}.incomplete`));
    throw new TransientDownloadError(
      `Cannot resume ${file.name}: the server refused the range bytes=${have}-`,
      { url, file: file.name, status: 416 },
    );
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw httpError(ctx, res, url, file.name);
  }
  if (!state.etag) {
    const etag = normalizeEtag(res.headers.get("x-linked-etag") ?? res.headers.get("etag"));
    if (!etag) {
      await res.body?.cancel();
      throw new DownloadError(
        `Cannot download ${file.name}: the server sent no usable ETag to name the blob`,
        {
          url,
          file: file.name,
        },
      );
    }
    state.etag = etag;
  }
  let append = false;
  if (res.status === 206) {
    const range = parseContentRange(res.headers.get("content-range"));
    if (!range || range.start !== have) {
      await res.body?.cancel();
      await removeIfExists(join(blobs, `${state.etag}.incomplete`));
      throw new TransientDownloadError(
        `Cannot resume ${file.name}: the server sent another range than bytes=${have}-`,
        { url, file: file.name, status: 206 },
      );
    }
    append = true;
    state.expected ??= range.total;
  } else {
    have = 0; // A 200 carries the whole file: start over.
    state.expected ??= contentLength(res);
  }
  const partial = join(blobs, `${state.etag}.incomplete`);
  // crypto.subtle.digest cannot hash a stream, so node:crypto's incremental hash is used: the sha256 of LFS
  // files of any size is checked while they download (a resumed file's existing bytes are hashed first).
  const hash = file.sha256 ? createHash("sha256") : undefined;
  if (hash && append) await hashFile(partial, hash);
  let done = have;
  progress.update(done, state.expected);
  const out = await Deno.open(partial, { write: true, create: true, append, truncate: !append });
  const reader = res.body?.getReader();
  try {
    while (reader) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (e) {
        throw new TransientDownloadError(
          `Cannot download ${file.name}: the connection ended early after ${done} bytes (${message(e)})`,
          { url, file: file.name, cause: e },
        );
      }
      if (chunk.done) break;
      await writeAll(out, chunk.value);
      hash?.update(chunk.value);
      done += chunk.value.length;
      progress.update(done, state.expected);
    }
  } catch (e) {
    await reader?.cancel().catch(() => {});
    throw e;
  } finally {
    out.close();
  }
  await finishBlob(url, blobs, file, state, done, hash);
}

/** Checks the size (and the sha256 when hashed) of the finished `.incomplete`, then renames it to the blob. */
async function finishBlob(
  url: string,
  blobs: string,
  file: RemoteFile,
  state: DownloadState,
  actual: number,
  hash: Hash | undefined,
): Promise<void> {
  const partial = join(blobs, `${state.etag}.incomplete`);
  if (state.expected !== undefined && actual !== state.expected) {
    await removeIfExists(partial);
    throw new DownloadError(
      `Cannot download ${file.name}: received ${actual} bytes where ${state.expected} were expected`,
      { url, file: file.name, expected: state.expected, actual },
    );
  }
  if (file.sha256) {
    if (!hash) {
      hash = createHash("sha256");
      await hashFile(partial, hash);
    }
    const digest = hash.digest("hex");
    if (digest !== file.sha256) {
      await removeIfExists(partial);
      throw new DownloadError(
        `Cannot download ${file.name}: its sha256 is ${digest} where the hub lists ${file.sha256}`,
        { url, file: file.name },
      );
    }
  }
  await Deno.rename(partial, join(blobs, state.etag!));
}

/** Points `link` at `blob` with a relative symlink (a copy where symlinks fail), replacing it atomically. */
async function linkSnapshot(blob: string, link: string): Promise<void> {
  await Deno.mkdir(dirname(link), { recursive: true });
  const tmp = `${link}.${crypto.randomUUID()}.tmp`;
  try {
    await Deno.symlink(relative(dirname(link), blob), tmp);
  } catch {
    await Deno.copyFile(blob, tmp);
  }
  try {
    await Deno.rename(tmp, link);
  } catch (e) {
    await removeIfExists(tmp);
    throw e;
  }
}

/** The snapshot of `refs/{revision}` (or of the commit itself) when it looks complete; undefined otherwise. */
async function cachedSnapshot(ctx: Context): Promise<string | undefined> {
  let commit: string | undefined = ctx.revision;
  if (!COMMIT_SHA.test(commit)) {
    try {
      commit = (await Deno.readTextFile(join(ctx.repoDir, "refs", ctx.revision))).trim();
    } catch {
      return undefined;
    }
  }
  if (!COMMIT_SHA.test(commit)) return undefined;
  const dir = join(ctx.repoDir, "snapshots", commit);
  return await snapshotLooksComplete(dir, ctx.filter === undefined) ? dir : undefined;
}

/**
 * Without the listing, completeness is judged from the snapshot: every entry resolves to a file, and with the
 * default file choice there are `config.json`, safetensors weights and every shard the index names.
 */
async function snapshotLooksComplete(dir: string, defaultFiles: boolean): Promise<boolean> {
  const names: string[] = [];
  try {
    if (!await collectFiles(dir, "", names)) return false;
  } catch {
    return false;
  }
  if (names.length === 0) return false;
  if (!defaultFiles) return true;
  if (!names.includes("config.json") || !names.some((n) => n.endsWith(".safetensors"))) return false;
  if (!names.includes(INDEX_FILE)) return true;
  try {
    const index = JSON.parse(await Deno.readTextFile(join(dir, INDEX_FILE))) as { weight_map?: unknown };
    const shards = new Set(Object.values((index.weight_map ?? {}) as Record<string, unknown>));
    return [...shards].every((s) => typeof s === "string" && names.includes(s));
  } catch {
    return false;
  }
}

/** Adds the files under `dir/prefix` to `names`; false when an entry does not resolve to a file (a dangling link). */
async function collectFiles(dir: string, prefix: string, names: string[]): Promise<boolean> {
  for await (const entry of Deno.readDir(join(dir, prefix))) {
    const name = prefix ? `${prefix}/${entry.name}` : entry.name;
    const info = await statOrUndefined(join(dir, name));
    if (!info) return false;
    if (info.isDirectory) {
      if (!await collectFiles(dir, name, names)) return false;
    } else if (info.isFile) {
      names.push(name);
    }
  }
  return true;
}

async function withRetries<T>(ctx: Context, attempt: () => Promise<T>): Promise<T> {
  for (let n = 0;; n++) {
    try {
      return await attempt();
    } catch (e) {
      if (!(e instanceof TransientDownloadError) || n >= ctx.retries) throw e;
      await new Promise((resolve) => setTimeout(resolve, Math.min(200 * 2 ** n, 3000)));
    }
  }
}

async function request(
  ctx: Context,
  url: string,
  headers: Headers,
  file: string | undefined,
): Promise<Response> {
  let res: Response;
  try {
    res = await ctx.fetch(url, { headers, redirect: "follow" });
  } catch (e) {
    throw new TransientDownloadError(`Cannot reach ${url}: ${message(e)}`, { url, file, cause: e });
  }
  if (res.status === 429 || res.status >= 500) {
    await res.body?.cancel();
    throw new TransientDownloadError(
      `Cannot download ${file ?? `the listing of ${ctx.repo}`}: the hub answered HTTP ${res.status}`,
      { url, file, status: res.status },
    );
  }
  return res;
}

function httpError(ctx: Context, res: Response, url: string, file: string | undefined): Error {
  const code = res.headers.get("x-error-code");
  const what = file ?? `${ctx.repo}@${ctx.revision}`;
  if (res.status === 401 || res.status === 403) {
    const hint = ctx.token
      ? "the token given (HF_TOKEN) does not grant access"
      : "set HF_TOKEN to a token with access (and accept the model's terms on the hub if it is gated)";
    return new DownloadError(
      `Cannot download ${what}: access denied (HTTP ${res.status}); the repository may be gated or private, or may not exist; ${hint}`,
      { url, file, status: res.status },
    );
  }
  if (res.status === 404) {
    const why = code === "RevisionNotFound"
      ? `revision ${ctx.revision} does not exist`
      : file && code !== "RepoNotFound"
      ? `the repository has no file ${file} at this commit`
      : "the repository or revision does not exist";
    return new ModelSourceError(
      `Cannot find ${ctx.repo}@${ctx.revision} on ${ctx.endpoint}: ${why}`,
      ctx.source,
    );
  }
  return new DownloadError(`Cannot download ${what}: the hub answered HTTP ${res.status}`, {
    url,
    file,
    status: res.status,
  });
}

function authHeaders(ctx: Context): Headers {
  const headers = new Headers();
  if (ctx.token) headers.set("Authorization", `Bearer ${ctx.token}`);
  return headers;
}

function normalizeEtag(value: string | null): string | undefined {
  if (!value) return undefined;
  const etag = value.trim().replace(/^W\//, "").replace(/^"|"$/g, "");
  return SAFE_ETAG.test(etag) && etag !== "." && etag !== ".." ? etag : undefined;
}

function parseContentRange(value: string | null): { start: number; total: number | undefined } | undefined {
  const m = value ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value.trim()) : null;
  if (!m) return undefined;
  return { start: Number(m[1]), total: m[3] === "*" ? undefined : Number(m[3]) };
}

/** Content-Length, when it counts the bytes the body will yield (not a compressed length). */
function contentLength(res: Response): number | undefined {
  const encoding = res.headers.get("content-encoding");
  if (encoding && encoding !== "identity") return undefined;
  const value = res.headers.get("content-length");
  return value && /^\d+$/.test(value) ? Number(value) : undefined;
}

async function isCompleteFile(path: string, size: number | undefined): Promise<boolean> {
  const info = await statOrUndefined(path);
  return info !== undefined && info.isFile && (size === undefined || info.size === size);
}

async function hashFile(path: string, hash: Hash): Promise<void> {
  using file = await Deno.open(path, { read: true });
  const buffer = new Uint8Array(1 << 20);
  for (;;) {
    const n = await file.read(buffer);
    if (n === null) break;
    hash.update(buffer.subarray(0, n));
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let rest = bytes;
  while (rest.length > 0) rest = rest.subarray(await file.write(rest));
}

async function writeAtomic(path: string, text: string): Promise<void> {
  await Deno.mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${crypto.randomUUID()}.tmp`;
  await Deno.writeTextFile(tmp, text);
  await Deno.rename(tmp, path);
}

function isSafeRelativePath(name: string): boolean {
  if (name === "" || name.startsWith("/") || name.includes("\\") || name.includes("\0")) return false;
  return name.split("/").every((part) => part !== "" && part !== "." && part !== "..");
}

async function statOrUndefined(path: string): Promise<Deno.FileInfo | undefined> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return undefined;
    throw e;
  }
}

async function removeIfExists(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

function isTruthy(value: string | undefined): boolean {
  return value !== undefined && ["1", "true"].includes(value.trim().toLowerCase());
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
