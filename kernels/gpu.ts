/**
 * WebGPU plumbing shared by every kernel: acquiring a device with the adapter's real limits, labelled buffers,
 * compute programs compiled once and cached by source, and the per-step uniform ring that lets many decode
 * steps be encoded into one submission with bind groups created once.
 *
 * @module
 */

import { GpuError } from "../engine/errors.ts";
import { GpuKeepAwake, keepAwakeDisabled } from "./keep_awake.ts";

/** A device and what it can do. */
export interface GpuContext {
  /** The device. */
  device: GPUDevice;
  /** Adapter description, for logs. */
  adapterName: string;
  /** `shader-f16` was granted: f16 weights, activations and KV cache are possible. */
  hasF16: boolean;
  /** `subgroups` was granted. */
  hasSubgroups: boolean;
  /** `timestamp-query` was granted. */
  hasTimestamps: boolean;
  /** The adapter is a software rasterizer (llvmpipe, SwiftShader). */
  isFallback: boolean;
  /** Keeps a hardware GPU in its fast state (kernels/keep_awake.ts); absent on software adapters or when off. */
  keepAwake?: GpuKeepAwake;
}

/** Whether a WebGPU adapter exists on this machine. */
export async function hasWebGpuAdapter(): Promise<boolean> {
  if (typeof navigator === "undefined" || !navigator.gpu) return false;
  try {
    return (await navigator.gpu.requestAdapter()) !== null;
  } catch {
    return false;
  }
}

let shared: Promise<GpuContext> | undefined;

/**
 * The process-wide device (one per process, created on first use), with the adapter's buffer and workgroup
 * limits requested explicitly (WebGPU's defaults are far smaller) and `shader-f16`, `subgroups` and
 * `timestamp-query` when the adapter has them. On a hardware adapter it also keeps the GPU out of its idle
 * power state for the life of the process (kernels/keep_awake.ts; `EDGEMIX_GPU_KEEP_AWAKE=0` turns that off).
 */
export function acquireGpu(): Promise<GpuContext> {
  shared ??= createGpu().catch((e) => {
    shared = undefined;
    throw e;
  });
  return shared;
}

async function createGpu(): Promise<GpuContext> {
  if (typeof navigator === "undefined" || !navigator.gpu) {
    throw new GpuError("Cannot use WebGPU: navigator.gpu is not available in this runtime");
  }
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) {
    throw new GpuError("Cannot use WebGPU: no adapter was found (no GPU driver or Vulkan loader)");
  }
  const want: GPUFeatureName[] = [];
  const hasF16 = adapter.features.has("shader-f16");
  if (hasF16) want.push("shader-f16");
  const hasTimestamps = adapter.features.has("timestamp-query");
  if (hasTimestamps) want.push("timestamp-query");
  const limits = adapter.limits;
  const requiredLimits: Record<string, number> = {
    maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
    maxBufferSize: limits.maxBufferSize,
    maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
    maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
    maxComputeWorkgroupSizeX: limits.maxComputeWorkgroupSizeX,
    maxComputeWorkgroupsPerDimension: limits.maxComputeWorkgroupsPerDimension,
    maxStorageBuffersPerShaderStage: Math.min(limits.maxStorageBuffersPerShaderStage, 16),
    maxDynamicUniformBuffersPerPipelineLayout: limits.maxDynamicUniformBuffersPerPipelineLayout,
  };
  // `subgroups` may be absent from adapter.features in Deno yet requestable: try it, fall back without.
  let device: GPUDevice | undefined;
  let hasSubgroups = false;
  try {
    device = await adapter.requestDevice({
      requiredFeatures: [...want, "subgroups" as GPUFeatureName],
      requiredLimits,
    });
    hasSubgroups = true;
  } catch {
    device = await adapter.requestDevice({ requiredFeatures: want, requiredLimits });
  }
  const info = adapter.info;
  const isFallback = info.isFallbackAdapter || /llvmpipe|swiftshader|software/i.test(info.description ?? "");
  return {
    device,
    adapterName: info.description || info.vendor || "unknown adapter",
    hasF16,
    hasSubgroups,
    hasTimestamps,
    isFallback,
    keepAwake: isFallback || keepAwakeDisabled() ? undefined : new GpuKeepAwake(device),
  };
}

/** Usage of storage buffers the engine reads and writes and may copy from or into. */
export const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

/** Creates a labelled storage buffer of at least `bytes` (rounded up to 16). */
export function storageBuffer(device: GPUDevice, label: string, bytes: number, usage = STORAGE): GPUBuffer {
  const size = Math.max(16, Math.ceil(bytes / 16) * 16);
  if (size > device.limits.maxBufferSize) {
    throw new GpuError(
      `Cannot allocate ${label}: ${size} bytes exceed the device's maxBufferSize of ${device.limits.maxBufferSize}`,
    );
  }
  return device.createBuffer({ label, size, usage });
}

/** Uploads `data` into a new labelled storage buffer. */
export function uploadBuffer(
  device: GPUDevice,
  label: string,
  data: ArrayBufferView,
  usage = STORAGE,
): GPUBuffer {
  const buf = storageBuffer(device, label, data.byteLength, usage);
  writeAligned(device, buf, 0, data);
  return buf;
}

/** `queue.writeBuffer` for data whose byte length need not be a multiple of 4 (pads a copy). */
export function writeAligned(device: GPUDevice, buf: GPUBuffer, offset: number, data: ArrayBufferView): void {
  const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
  if (bytes.byteLength % 4 === 0) {
    device.queue.writeBuffer(buf, offset, bytes);
  } else {
    const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
    padded.set(bytes);
    device.queue.writeBuffer(buf, offset, padded);
  }
}

/** Most rows of one batched dispatch: sequences whose decode steps share a GPU pass (continuous batching). */
export const MAX_BATCH_ROWS = 32;

/** Bytes of the step uniform: a 48-byte header and one 16-byte row record per batched row. */
export const STEP_UNIFORM_BYTES = 48 + 16 * MAX_BATCH_ROWS;

/** Bytes of one slot of the step-uniform ring (the uniform rounded up to a 256-byte dynamic-offset boundary). */
export const STEP_SLOT_BYTES: number = Math.ceil(STEP_UNIFORM_BYTES / 256) * 256;

/**
 * WGSL of the per-dispatch parameters every kernel reads at `@group(1) @binding(0)`, from one slot of the step
 * ring selected by a dynamic offset, and the accessors of a row's position, sequence lane and steps.
 *
 * Unbatched (`batched` 0): row r is at position `pos + r` of lane `lane`, its input token is ring slot
 * `ring_in` and it samples step `step`. Batched (`batched` 1, continuous batching): every row is its own
 * sequence, described by `row_info[r]` = (position, lane, input ring slot, step). A lane is one sequence's
 * region of the KV cache and of the token ring (`ring_stride` slots per lane).
 */
export const STEP_WGSL = /* wgsl */ `
struct Step {
  pos: u32,        // position of row 0 (unbatched)
  rows: u32,       // token rows in this dispatch
  step: u32,       // generation step (sampler's random stream and token-ring slot; unbatched)
  src_ring: u32,   // 1: the input token is read from the token ring; 0: input ids come from the ids buffer
  ring_in: u32,    // token-ring slot the input token is read from (unbatched)
  logits_row: u32, // first logits row the sampler reads
  batched: u32,    // 1: rows are sequences described by row_info
  lane: u32,       // the sequence lane of every row (unbatched)
  ring_stride: u32,// token-ring slots per lane
  pad0: u32,
  pad1: u32,
  pad2: u32,
  row_info: array<vec4<u32>, ${MAX_BATCH_ROWS}>, // batched rows: (position, lane, ring slot in, step)
}
@group(1) @binding(0) var<uniform> st: Step;
fn row_pos(r: u32) -> u32 {
  if (st.batched != 0u) { return st.row_info[r].x; }
  return st.pos + r;
}
fn row_lane(r: u32) -> u32 {
  if (st.batched != 0u) { return st.row_info[r].y; }
  return st.lane;
}
fn row_ring_in(r: u32) -> u32 {
  if (st.batched != 0u) { return st.row_info[r].y * st.ring_stride + st.row_info[r].z; }
  return st.lane * st.ring_stride + st.ring_in;
}
fn row_step(r: u32) -> u32 {
  if (st.batched != 0u) { return st.row_info[r].w; }
  return st.step;
}
`;

/** One row of a batched step: a sequence's position, lane, input ring slot and generation step. */
export interface StepRow {
  /** Position of the row's token. */
  pos: number;
  /** The sequence's lane (its KV-cache and token-ring region). */
  lane: number;
  /** Ring slot (within the lane) of the input token. */
  ringIn: number;
  /** Generation step (ring slot written by the sampler, and its random stream). */
  step: number;
}

/** Values of one step slot (see {@linkcode STEP_WGSL}). */
export interface StepValues {
  /** Position of row 0. */
  pos: number;
  /** Token rows. */
  rows: number;
  /** Generation step. */
  step: number;
  /** Read the input token from the ring. */
  srcRing: boolean;
  /** Ring slot of the input token. */
  ringIn: number;
  /** First logits row the sampler reads. */
  logitsRow: number;
  /** The lane of every row (default 0; unbatched). */
  lane?: number;
  /** Token-ring slots per lane (default 0). */
  ringStride?: number;
  /** Batched rows (continuous batching): row r is `batch[r]`; `rows` must equal its length. */
  batch?: readonly StepRow[];
}

/**
 * A ring of step-uniform slots: the host fills slots for every step of a submission with one `writeBuffer`,
 * and each dispatch selects its slot with a dynamic offset, so bind groups never change.
 */
export class StepRing {
  /** The uniform buffer [slots × 256 B]. */
  readonly buffer: GPUBuffer;
  /** Layout of bind group 1 (one dynamic uniform). */
  readonly layout: GPUBindGroupLayout;
  /** The bind group, bound with a dynamic offset per dispatch. */
  readonly bindGroup: GPUBindGroup;
  /** Number of slots. */
  readonly slots: number;
  readonly #staging: Uint32Array<ArrayBuffer>;
  #dirtyFrom = Infinity;
  #dirtyTo = -1;

  /** Makes a ring of `slots` slots. */
  constructor(device: GPUDevice, slots: number) {
    this.slots = slots;
    this.buffer = device.createBuffer({
      label: "step-ring",
      size: slots * STEP_SLOT_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    this.layout = device.createBindGroupLayout({
      label: "step-ring-layout",
      entries: [{
        binding: 0,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: "uniform", hasDynamicOffset: true, minBindingSize: STEP_UNIFORM_BYTES },
      }],
    });
    this.bindGroup = device.createBindGroup({
      label: "step-ring-group",
      layout: this.layout,
      entries: [{ binding: 0, resource: { buffer: this.buffer, offset: 0, size: STEP_UNIFORM_BYTES } }],
    });
    this.#staging = new Uint32Array((slots * STEP_SLOT_BYTES) / 4);
  }

  /** Sets slot `i`; call {@linkcode flush} before submitting. Returns the dynamic offset of the slot. */
  set(i: number, v: StepValues): number {
    if (i < 0 || i >= this.slots) {
      throw new RangeError(`Cannot set step slot ${i}: the ring has ${this.slots} slots`);
    }
    const o = (i * STEP_SLOT_BYTES) / 4;
    const s = this.#staging;
    s[o] = v.pos;
    s[o + 1] = v.rows;
    s[o + 2] = v.step;
    s[o + 3] = v.srcRing ? 1 : 0;
    s[o + 4] = v.ringIn;
    s[o + 5] = v.logitsRow;
    s[o + 6] = v.batch ? 1 : 0;
    s[o + 7] = v.lane ?? 0;
    s[o + 8] = v.ringStride ?? 0;
    if (v.batch) {
      if (v.batch.length !== v.rows || v.batch.length > MAX_BATCH_ROWS) {
        throw new RangeError(
          `Cannot set step slot ${i}: ${v.batch.length} batched rows for ${v.rows} rows (at most ${MAX_BATCH_ROWS})`,
        );
      }
      v.batch.forEach((row, r) => {
        const at = o + 12 + 4 * r;
        s[at] = row.pos;
        s[at + 1] = row.lane;
        s[at + 2] = row.ringIn;
        s[at + 3] = row.step;
      });
    }
    this.#dirtyFrom = Math.min(this.#dirtyFrom, i);
    this.#dirtyTo = Math.max(this.#dirtyTo, i);
    return i * STEP_SLOT_BYTES;
  }

  /** Writes the slots set since the last flush to the GPU. */
  flush(device: GPUDevice): void {
    if (this.#dirtyTo < this.#dirtyFrom) return;
    const from = (this.#dirtyFrom * STEP_SLOT_BYTES) / 4;
    const to = ((this.#dirtyTo + 1) * STEP_SLOT_BYTES) / 4;
    device.queue.writeBuffer(this.buffer, from * 4, this.#staging.subarray(from, to));
    this.#dirtyFrom = Infinity;
    this.#dirtyTo = -1;
  }
}

/** One kind of binding of a program's group 0. */
export type BindingKind = "read" | "write" | "uniform";

/**
 * A compute pipeline compiled from WGSL, with an explicit layout: group 0 holds the program's buffers
 * (`bindings` in binding order), group 1 the step ring. Programs are cached per device by their source.
 */
export class Program {
  /** The pipeline. */
  readonly pipeline: GPUComputePipeline;
  /** Layout of group 0. */
  readonly layout: GPUBindGroupLayout;
  /** Label, for errors and traces. */
  readonly label: string;
  readonly #device: GPUDevice;

  private constructor(
    device: GPUDevice,
    label: string,
    pipeline: GPUComputePipeline,
    layout: GPUBindGroupLayout,
  ) {
    this.#device = device;
    this.label = label;
    this.pipeline = pipeline;
    this.layout = layout;
  }

  /**
   * Compiles (or takes from the cache) the program `code` with group-0 `bindings`. Rejects with a
   * {@linkcode GpuError} carrying the compiler's messages when the WGSL is invalid.
   */
  static get(
    device: GPUDevice,
    ring: StepRing,
    label: string,
    code: string,
    bindings: BindingKind[],
  ): Promise<Program> {
    let cache = programCache.get(device);
    if (!cache) programCache.set(device, cache = new Map());
    const key = code + "|" + bindings.join(",");
    const hit = cache.get(key);
    if (hit) return hit;
    const made = Program.#create(device, ring, label, code, bindings);
    cache.set(key, made);
    made.catch(() => cache.delete(key));
    return made;
  }

  static async #create(
    device: GPUDevice,
    ring: StepRing,
    label: string,
    code: string,
    bindings: BindingKind[],
  ): Promise<Program> {
    const layout = device.createBindGroupLayout({
      label: `${label}-layout`,
      entries: bindings.map((kind, binding) => ({
        binding,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: kind === "read" ? "read-only-storage" : kind === "write" ? "storage" : "uniform" },
      })),
    });
    const module = device.createShaderModule({ label, code });
    try {
      const pipeline = await device.createComputePipelineAsync({
        label,
        layout: device.createPipelineLayout({
          label: `${label}-pipeline-layout`,
          bindGroupLayouts: [layout, ring.layout],
        }),
        compute: { module, entryPoint: "main" },
      });
      return new Program(device, label, pipeline, layout);
    } catch (e) {
      const info = await module.getCompilationInfo();
      const messages = info.messages.map((m) => `${m.type} at line ${m.lineNum}: ${m.message}`).join("\n");
      throw new GpuError(`Cannot compile kernel ${label}: ${messages || String(e)}`, { cause: e });
    }
  }

  /** A bind group of `buffers` in binding order (made once, at model load). */
  bind(
    label: string,
    buffers: (GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number })[],
  ): GPUBindGroup {
    return this.#device.createBindGroup({
      label,
      layout: this.layout,
      entries: buffers.map((b, binding) => ({
        binding,
        resource: b instanceof GPUBuffer ? { buffer: b } : b,
      })),
    });
  }
}

const programCache = new WeakMap<GPUDevice, Map<string, Promise<Program>>>();

/** A prepared dispatch: program, its bound buffers and the workgroup grid. */
export interface Dispatch {
  /** The program. */
  program: Program;
  /** Its group-0 bind group. */
  group: GPUBindGroup;
  /** Workgroups in x, y, z. */
  grid: [number, number, number];
}

/** What a pass last had bound through {@linkcode encodeDispatch}. */
interface PassState {
  pipeline: GPUComputePipeline | undefined;
  ring: StepRing | undefined;
  offset: number;
}

const passStates = new WeakMap<GPUComputePassEncoder, PassState>();

/**
 * Encodes `d` into `pass` with the step slot at byte offset `stepOffset`. The pipeline and the step ring's group
 * are set only when they change: every program's group 1 has the ring's layout, so the bound ring survives
 * pipeline changes, and each call into the encoder costs CPU time in the decode loop. Passes given to this
 * function must not set pipelines or group 1 otherwise.
 */
export function encodeDispatch(
  pass: GPUComputePassEncoder,
  ring: StepRing,
  d: Dispatch,
  stepOffset: number,
): void {
  let state = passStates.get(pass);
  if (!state) passStates.set(pass, state = { pipeline: undefined, ring: undefined, offset: -1 });
  if (state.pipeline !== d.program.pipeline) {
    pass.setPipeline(d.program.pipeline);
    state.pipeline = d.program.pipeline;
  }
  pass.setBindGroup(0, d.group);
  if (state.ring !== ring || state.offset !== stepOffset) {
    pass.setBindGroup(1, ring.bindGroup, [stepOffset]);
    state.ring = ring;
    state.offset = stepOffset;
  }
  pass.dispatchWorkgroups(d.grid[0], d.grid[1], d.grid[2]);
}

/** Splits `n` workgroups into an (x, y) grid within the per-dimension limit. */
export function grid2d(n: number, limit = 65535): [number, number, number] {
  if (n <= limit) return [Math.max(1, n), 1, 1];
  const y = Math.ceil(n / limit);
  return [Math.ceil(n / y), y, 1];
}

/** Reads `bytes` bytes of `src` at `offset` back to the CPU (one awaited round trip). */
export async function readBuffer(
  device: GPUDevice,
  src: GPUBuffer,
  offset: number,
  bytes: number,
): Promise<ArrayBuffer> {
  const staging = device.createBuffer({
    label: "readback",
    size: Math.ceil(bytes / 4) * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const enc = device.createCommandEncoder({ label: "readback" });
  enc.copyBufferToBuffer(src, offset, staging, 0, Math.ceil(bytes / 4) * 4);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = staging.getMappedRange().slice(0, bytes);
  staging.unmap();
  staging.destroy();
  return out;
}
