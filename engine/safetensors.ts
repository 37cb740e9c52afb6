/**
 * Reads safetensors files: an 8-byte little-endian header length, a JSON header that maps tensor names to
 * `{ dtype, shape, data_offsets }`, then the raw data. Headers are validated against the file size so that a
 * truncated or corrupted file fails at open with an error naming the file and tensor, never later on the GPU.
 *
 * @module
 */

import { DTYPE_BYTES } from "./dtype.ts";
import { ModelLoadError } from "./errors.ts";

/** Where one tensor lies in a safetensors file. */
export interface TensorInfo {
  /** Tensor name. */
  name: string;
  /** Safetensors dtype, e.g. "F32", "BF16". */
  dtype: string;
  /** Shape, outermost first. */
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  offset: number;
  /** Byte length of the data. */
  byteLength: number;
  /** The file that holds it. */
  file: string;
}

const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** An open safetensors file whose tensors are read on demand. */
export class SafetensorsFile {
  /** Path of the file. */
  readonly path: string;
  /** Tensors by name. */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  /** The `__metadata__` map of the header. */
  readonly metadata: Readonly<Record<string, string>>;
  #file: Deno.FsFile | undefined;

  private constructor(
    path: string,
    file: Deno.FsFile,
    tensors: Map<string, TensorInfo>,
    metadata: Record<string, string>,
  ) {
    this.path = path;
    this.#file = file;
    this.tensors = tensors;
    this.metadata = metadata;
  }

  /** Opens `path` and validates its header against the file size. */
  static async open(path: string): Promise<SafetensorsFile> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      const why = e instanceof Deno.errors.NotFound ? "the file does not exist" : String(e);
      throw new ModelLoadError(`Cannot open ${path}: ${why}`, { file: path, cause: e });
    }
    try {
      const size = (await file.stat()).size;
      const { tensors, metadata } = await readHeader(file, path, size);
      return new SafetensorsFile(path, file, tensors, metadata);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /** Raw bytes of tensor `name`. */
  async read(name: string): Promise<Uint8Array> {
    const info = this.tensors.get(name);
    if (!info) {
      throw new ModelLoadError(`Cannot read tensor ${name}: it is not in ${this.path}`, {
        file: this.path,
        tensor: name,
      });
    }
    return await this.readInfo(info);
  }

  /**
   * Raw bytes of the tensor described by `info` (which must belong to this file). Reads of one file run one
   * at a time: each is a seek and reads on a shared handle, which concurrent calls would interleave.
   */
  readInfo(info: TensorInfo): Promise<Uint8Array> {
    const next = this.#queue.then(() => this.#readInfo(info));
    this.#queue = next.then(() => {}, () => {});
    return next;
  }

  #queue: Promise<void> = Promise.resolve();

  async #readInfo(info: TensorInfo): Promise<Uint8Array> {
    const file = this.#file;
    if (!file) {
      throw new ModelLoadError(`Cannot read tensor ${info.name}: ${this.path} is closed`, {
        file: this.path,
      });
    }
    const out = new Uint8Array(info.byteLength);
    await file.seek(info.offset, Deno.SeekMode.Start);
    let done = 0;
    while (done < out.length) {
      const n = await file.read(out.subarray(done));
      if (n === null) {
        throw new ModelLoadError(
          `Cannot read tensor ${info.name}: ${this.path} ended after ${done} of its ${info.byteLength} bytes`,
          { file: this.path, tensor: info.name },
        );
      }
      done += n;
    }
    return out;
  }

  /** Closes the file. */
  close(): void {
    this.#file?.close();
    this.#file = undefined;
  }
}

async function readExactly(file: Deno.FsFile, n: number, path: string, what: string): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  let done = 0;
  while (done < n) {
    const r = await file.read(buf.subarray(done));
    if (r === null) {
      throw new ModelLoadError(`Cannot read ${path}: the file ends inside its ${what}`, { file: path });
    }
    done += r;
  }
  return buf;
}

async function readHeader(
  file: Deno.FsFile,
  path: string,
  size: number,
): Promise<{ tensors: Map<string, TensorInfo>; metadata: Record<string, string> }> {
  if (size < 8) {
    throw new ModelLoadError(`Cannot read ${path}: ${size} bytes is too short for a safetensors file`, {
      file: path,
    });
  }
  const lenBytes = await readExactly(file, 8, path, "header length");
  const headerLen = Number(new DataView(lenBytes.buffer).getBigUint64(0, true));
  if (headerLen > MAX_HEADER_BYTES || headerLen > size - 8) {
    throw new ModelLoadError(
      `Cannot read ${path}: header length ${headerLen} does not fit the file of ${size} bytes (truncated or not safetensors)`,
      { file: path },
    );
  }
  const headerBytes = await readExactly(file, headerLen, path, "header");
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(headerBytes));
  } catch (e) {
    throw new ModelLoadError(`Cannot read ${path}: the header is not valid JSON (corrupted file)`, {
      file: path,
      cause: e,
    });
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new ModelLoadError(`Cannot read ${path}: the header is not a JSON object`, { file: path });
  }
  const dataStart = 8 + headerLen;
  const dataLen = size - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      metadata = (value ?? {}) as Record<string, string>;
      continue;
    }
    const v = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const bad = (why: string) =>
      new ModelLoadError(`Cannot read tensor ${name} in ${path}: ${why}`, { file: path, tensor: name });
    if (typeof v !== "object" || v === null) throw bad("its header entry is not an object");
    if (typeof v.dtype !== "string" || !(v.dtype in DTYPE_BYTES)) {
      throw bad(`unknown dtype ${JSON.stringify(v.dtype)}`);
    }
    if (!Array.isArray(v.shape) || !v.shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw bad(`invalid shape ${JSON.stringify(v.shape)}`);
    }
    const offs = v.data_offsets;
    if (
      !Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isInteger(o) && o >= 0) ||
      offs[0] > offs[1]
    ) {
      throw bad(`invalid data_offsets ${JSON.stringify(offs)}`);
    }
    const shape = v.shape as number[];
    const expected = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[v.dtype];
    const byteLength = offs[1] - offs[0];
    if (byteLength !== expected) {
      throw bad(`data_offsets span ${byteLength} bytes but shape [${shape}] of ${v.dtype} needs ${expected}`);
    }
    if (offs[1] > dataLen) {
      throw bad(
        `its data ends at byte ${offs[1]} but the file holds only ${dataLen} data bytes (truncated file)`,
      );
    }
    tensors.set(name, { name, dtype: v.dtype, shape, offset: dataStart + offs[0], byteLength, file: path });
  }
  return { tensors, metadata };
}

/** A tensor to write: safetensors dtype, shape and raw little-endian bytes. */
export interface TensorData {
  /** Safetensors dtype, e.g. "F32". */
  dtype: string;
  /** Shape, outermost first. */
  shape: number[];
  /** Raw bytes (length = product of shape × dtype size). */
  data: Uint8Array;
}

/** Serializes `tensors` (in key order) and `metadata` into the bytes of a safetensors file. */
export function encodeSafetensors(
  tensors: Record<string, TensorData>,
  metadata: Record<string, string> = {},
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const expected = t.shape.reduce((a, b) => a * b, 1) * (DTYPE_BYTES[t.dtype] ?? NaN);
    if (t.data.byteLength !== expected) {
      throw new RangeError(
        `Cannot encode tensor ${name}: ${t.data.byteLength} bytes do not match shape [${t.shape}] of ${t.dtype}`,
      );
    }
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data starts 8-byte aligned, as the reference writer does.
  while ((8 + new TextEncoder().encode(json).byteLength) % 8 !== 0) json += " ";
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.byteLength;
  for (const t of Object.values(tensors)) {
    out.set(t.data, at);
    at += t.data.byteLength;
  }
  return out;
}
