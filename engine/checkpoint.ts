/**
 * A Hugging Face checkpoint directory: `config.json` and the safetensors files (single, sharded with
 * `model.safetensors.index.json`, or several without an index), with every tensor findable by name.
 *
 * @module
 */

import { join } from "node:path";
import { type ModelConfig, parseModelConfig } from "./config.ts";
import { type FloatDType, toFloat16Bits, toFloat32 } from "./dtype.ts";
import { ModelLoadError } from "./errors.ts";
import { SafetensorsFile, type TensorInfo } from "./safetensors.ts";
import { dequantize, PACKED_FORMAT, type PackedMatrix } from "./quant/pack.ts";
import { parseScheme, wordsPerGroup } from "./quant/scheme.ts";

/** A quantized tensor of a checkpoint written by `deno task quantize` (see docs/quantization.md). */
export interface QuantizedTensorInfo {
  /** The logical tensor name (`….weight`). */
  name: string;
  /** Bits per level. */
  bits: 2 | 3 | 4 | 8;
  /** Group size. */
  group: number;
  /** Logical shape [rows, cols]. */
  shape: [number, number];
}

/** An open checkpoint. Close it when the weights are loaded. */
export class Checkpoint {
  /** The directory. */
  readonly dir: string;
  /** The parsed `config.json`. */
  readonly config: ModelConfig;
  /** The raw `config.json` object. */
  readonly rawConfig: Record<string, unknown>;
  /** Quantized tensors by logical name (empty for a plain checkpoint). */
  readonly quantized: ReadonlyMap<string, QuantizedTensorInfo>;
  /** The parsed `quantization.json`, when the checkpoint has one. */
  readonly quantization: Record<string, unknown> | undefined;
  #files: SafetensorsFile[];
  #byName: Map<string, { file: SafetensorsFile; info: TensorInfo }>;

  private constructor(
    dir: string,
    config: ModelConfig,
    raw: Record<string, unknown>,
    files: SafetensorsFile[],
    quantization: Record<string, unknown> | undefined,
  ) {
    this.dir = dir;
    this.config = config;
    this.rawConfig = raw;
    this.#files = files;
    this.#byName = new Map();
    for (const file of files) {
      for (const info of file.tensors.values()) this.#byName.set(info.name, { file, info });
    }
    this.quantization = quantization;
    this.quantized = quantization ? this.#checkQuantized(quantization) : new Map();
  }

  #checkQuantized(q: Record<string, unknown>): Map<string, QuantizedTensorInfo> {
    const file = join(this.dir, "quantization.json");
    const tensors = q.tensors as Record<string, { scheme?: string; shape?: number[] }> | undefined;
    if (!tensors || typeof tensors !== "object") {
      throw new ModelLoadError(`Cannot read ${file}: it has no "tensors" map`, { file });
    }
    const format = String(q.format);
    if (format !== PACKED_FORMAT && format !== "edgemix-packed-v1") {
      throw new ModelLoadError(
        `Cannot read ${file}: its format ${
          JSON.stringify(q.format)
        } is not ${PACKED_FORMAT} (re-quantize the model)`,
        { file },
      );
    }
    const out = new Map<string, QuantizedTensorInfo>();
    for (const [name, t] of Object.entries(tensors)) {
      const scheme = parseScheme(String(t.scheme));
      if (scheme.kind === "f16") continue;
      if (format === "edgemix-packed-v1" && scheme.bits === 3) {
        // v1 stored 3-bit levels ten to a word; v2 stores them in bit planes (the other layouts are unchanged).
        throw new ModelLoadError(
          `Cannot load tensor ${name}: ${file} is in edgemix-packed-v1, whose 3-bit layout is no longer read ` +
            `(re-quantize the model to ${PACKED_FORMAT})`,
          { file, tensor: name },
        );
      }
      const shape = t.shape;
      if (!Array.isArray(shape) || shape.length !== 2 || !shape.every((d) => Number.isInteger(d) && d > 0)) {
        throw new ModelLoadError(`Cannot read ${file}: tensor ${name} has an invalid shape`, {
          file,
          tensor: name,
        });
      }
      const [rows, cols] = shape;
      const base = name.replace(/\.weight$/, "");
      const groups = cols / scheme.group;
      const expect: [string, number[]][] = [
        [`${base}.qweight`, [rows, groups * wordsPerGroup(scheme.bits, scheme.group)]],
        [`${base}.scales`, [rows, groups]],
        [`${base}.zeros`, [rows, groups]],
      ];
      for (const [n, sh] of expect) {
        const info = this.info(n);
        if (info.shape.length !== 2 || info.shape[0] !== sh[0] || info.shape[1] !== sh[1]) {
          throw new ModelLoadError(
            `Cannot load tensor ${n} from ${info.file}: its shape is [${info.shape}] but ${scheme.bits}-bit groups of ` +
              `${scheme.group} over [${rows}, ${cols}] need [${sh}]`,
            { file: info.file, tensor: n },
          );
        }
      }
      out.set(name, { name, bits: scheme.bits, group: scheme.group, shape: [rows, cols] });
    }
    return out;
  }

  /** Opens the checkpoint in `dir`, reading its config and every safetensors header. */
  static async open(dir: string): Promise<Checkpoint> {
    const raw = await readJson(join(dir, "config.json"));
    const config = parseModelConfig(raw, join(dir, "config.json"));
    const names = await safetensorsFiles(dir);
    const files: SafetensorsFile[] = [];
    try {
      for (const name of names) files.push(await SafetensorsFile.open(join(dir, name)));
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
    let quantization: Record<string, unknown> | undefined;
    try {
      await Deno.stat(join(dir, "quantization.json"));
      quantization = await readJson(join(dir, "quantization.json")) as Record<string, unknown>;
    } catch (e) {
      if (e instanceof ModelLoadError) throw e;
    }
    try {
      return new Checkpoint(dir, config, raw as Record<string, unknown>, files, quantization);
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
  }

  /** Every plain (not packed) tensor by name, with its dtype and shape. */
  plainTensors(): Map<string, { dtype: string; shape: number[] }> {
    const out = new Map<string, { dtype: string; shape: number[] }>();
    for (const [name, { info }] of this.#byName) out.set(name, { dtype: info.dtype, shape: [...info.shape] });
    return out;
  }

  /** Whether a tensor called `name` exists (plain, or quantized in packed form). */
  has(name: string): boolean {
    return this.#byName.has(name) || this.quantized.has(name);
  }

  /** Where tensor `name` lies; throws a {@linkcode ModelLoadError} naming it when absent. A quantized tensor's
   * info carries its logical shape and dtype "PACKED". */
  info(name: string): TensorInfo {
    const q = this.quantized?.get(name);
    if (q) {
      return {
        name,
        dtype: "PACKED",
        shape: [...q.shape],
        offset: 0,
        byteLength: 0,
        file: join(this.dir, "quantization.json"),
      };
    }
    const hit = this.#byName.get(name);
    if (!hit) {
      throw new ModelLoadError(
        `Cannot load tensor ${name}: it is in none of the safetensors files of ${this.dir}`,
        {
          tensor: name,
        },
      );
    }
    return hit.info;
  }

  /** Raw bytes of tensor `name`. */
  async readRaw(name: string): Promise<Uint8Array> {
    const hit = this.#byName.get(name);
    if (!hit) this.info(name);
    return await hit!.file.readInfo(hit!.info);
  }

  /** The packed form of quantized tensor `name`. */
  async readPacked(name: string): Promise<PackedMatrix> {
    const q = this.quantized.get(name);
    if (!q) {
      throw new ModelLoadError(`Cannot read tensor ${name} as packed: it is not quantized`, { tensor: name });
    }
    const base = name.replace(/\.weight$/, "");
    const u32 = (b: Uint8Array) => new Uint32Array(b.slice().buffer);
    const u16 = (b: Uint8Array) => new Uint16Array(b.slice().buffer);
    return {
      rows: q.shape[0],
      cols: q.shape[1],
      bits: q.bits,
      group: q.group,
      qweight: u32(await this.readRaw(`${base}.qweight`)),
      scales: u16(await this.readRaw(`${base}.scales`)),
      mins: u16(await this.readRaw(`${base}.zeros`)),
    };
  }

  /** Values of floating-point tensor `name` as float32 (quantized tensors are dequantized). */
  async readF32(name: string): Promise<Float32Array> {
    if (this.quantized.has(name)) return dequantize(await this.readPacked(name));
    const info = this.info(name);
    return toFloat32(await this.readRaw(name), floatDType(info));
  }

  /** Values of floating-point tensor `name` as float16 bit patterns (quantized tensors are dequantized). */
  async readF16Bits(name: string): Promise<Uint16Array> {
    if (this.quantized.has(name)) return new Uint16Array(new Float16Array(await this.readF32(name)).buffer);
    const info = this.info(name);
    return toFloat16Bits(await this.readRaw(name), floatDType(info));
  }

  /** Closes every file. */
  close(): void {
    for (const f of this.#files) f.close();
    this.#files = [];
  }
}

function floatDType(info: TensorInfo): FloatDType {
  if (info.dtype === "F32" || info.dtype === "F16" || info.dtype === "BF16") return info.dtype;
  throw new ModelLoadError(
    `Cannot load tensor ${info.name} from ${info.file}: dtype ${info.dtype} is not a supported float type (F32, F16, BF16)`,
    { file: info.file, tensor: info.name },
  );
}

/** Parses the JSON file at `path`, with errors that name it. */
export async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound ? "the file does not exist" : String(e);
    throw new ModelLoadError(`Cannot read ${path}: ${why}`, { file: path, cause: e });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ModelLoadError(`Cannot read ${path}: it is not valid JSON (${(e as Error).message})`, {
      file: path,
      cause: e,
    });
  }
}

async function safetensorsFiles(dir: string): Promise<string[]> {
  const indexPath = join(dir, "model.safetensors.index.json");
  let hasIndex = false;
  try {
    hasIndex = (await Deno.stat(indexPath)).isFile;
  } catch {
    hasIndex = false;
  }
  if (hasIndex) {
    const index = await readJson(indexPath) as { weight_map?: Record<string, string> };
    if (!index || typeof index.weight_map !== "object") {
      throw new ModelLoadError(`Cannot read ${indexPath}: it has no "weight_map" object`, {
        file: indexPath,
      });
    }
    const names = [...new Set(Object.values(index.weight_map))].sort();
    for (const n of names) {
      try {
        await Deno.stat(join(dir, n));
      } catch {
        throw new ModelLoadError(
          `Cannot load ${join(dir, n)}: the shard listed in ${indexPath} does not exist`,
          {
            file: join(dir, n),
          },
        );
      }
    }
    return names;
  }
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && e.name.endsWith(".safetensors")) names.push(e.name);
    }
  } catch (e) {
    throw new ModelLoadError(`Cannot read the checkpoint directory ${dir}: ${String(e)}`, {
      file: dir,
      cause: e,
    });
  }
  // A single-file checkpoint is model.safetensors; shards without an index follow transformers' naming.
  if (names.includes("model.safetensors")) return ["model.safetensors"];
  const shards = names.filter((n) => /^model-\d+-of-\d+\.safetensors$/.test(n));
  if (shards.length > 0) return shards.sort();
  if (names.length === 0) {
    throw new ModelLoadError(`Cannot load weights from ${dir}: it holds no model.safetensors (or shards)`, {
      file: join(dir, "model.safetensors"),
    });
  }
  return names.sort();
}
