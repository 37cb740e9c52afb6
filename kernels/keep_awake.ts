/**
 * Keeps a discrete GPU in its fast state. Measured on an NVIDIA H200 through Vulkan (Deno 2.9.6), with a kernel in
 * which 2,048 workgroups read 64 KiB (8.6 µs in a fresh process):
 * - after about a second without work on the device every kernel runs 3–4× slower (31–38 µs after 3 s idle, or
 *   after 2 s of the main thread filling buffers), and the short, bursty submissions of a decode loop do not
 *   bring it back;
 * - one single-workgroup dispatch every 50 or 500 ms keeps it fast (every 1,000 ms: 27 µs again);
 * - saturating work brings it back: 16.4 µs after 0.3 s of it, 9.8 after 0.6 s, 8.6 after 0.9 s.
 * So a hardware device gets a dispatch every 250 ms from a timer (which does not keep the process alive), and
 * `warmUp()` runs about a second of saturating work whenever the timer finds it fired late (the main thread
 * was busy: a model load, a conversion) or was never run; the decoder calls it after loading and before a
 * generation long enough to gain from it. A readback blocks the main thread until the GPU is done (Deno 2.9.6),
 * so the decoder reports each one with `noteBusy`: ticks missed while the GPU worked do not count (otherwise a
 * long prompt's prefill would make the next generation wait a second for a needless warm-up). The cost is the idle power of an awake GPU (on the H200: ~120 W instead of ~80 W);
 * `EDGEMIX_GPU_KEEP_AWAKE=0` turns both off (`deno task test` sets it: a timer left running by the test that
 * first acquires the GPU would trip Deno's leak checks on a GPU host). Software adapters (llvmpipe) never need
 * them.
 *
 * @module
 */

/** Default interval between keep-awake dispatches, in milliseconds. */
export const KEEP_AWAKE_MS = 250;
/** A gap between ticks longer than this means the device may have dropped into its slow state. */
export const KEEP_AWAKE_STALE_MS = 800;
/** Default duration of the saturating warm-up, in milliseconds (0.94 s brought the probe back to full speed). */
export const WARM_UP_MS = 1000;

// One dispatch: `wg` workgroups of 256 threads, each reading the whole [4096] vec4<f32> buffer (64 KiB, cached),
// writing nothing unless the sum hits a sentinel (never, for the zeros it holds).
const SOURCE = `@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> n: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  var s = vec4<f32>(0.0);
  for (var i = li; i < 4096u; i += 256u) { s += a[i]; }
  if (s.x == 1234.5) { n[1] = wg.x; }
  if (wg.x == 0u && li == 0u) { n[0] = n[0] + 1u; }
}`;

/** Periodic one-workgroup dispatches on `device`, and a saturating warm-up when they have lapsed. */
export class GpuKeepAwake {
  readonly #device: GPUDevice;
  readonly #pipeline: GPUComputePipeline;
  readonly #group: GPUBindGroup;
  // counter: [4] u32, [0] incremented by every dispatch; data: [4096] vec4<f32> zeros, read by the warm-up.
  readonly #counter: GPUBuffer;
  readonly #data: GPUBuffer;
  #timer: ReturnType<typeof setInterval> | undefined;
  #last = 0;
  #stale = true;
  // When a tick last found the ticks lapsed (it set #stale).
  #staleSince = 0;
  #warming: Promise<void> | undefined;

  /** Starts dispatching every `intervalMs` milliseconds (a positive number). */
  constructor(device: GPUDevice, intervalMs = KEEP_AWAKE_MS) {
    if (!(intervalMs > 0)) {
      throw new RangeError(`Cannot keep the GPU awake: the interval ${intervalMs} ms must be positive`);
    }
    this.#device = device;
    this.#counter = device.createBuffer({
      label: "keep-awake.counter",
      size: 16,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
    });
    this.#data = device.createBuffer({
      label: "keep-awake.data",
      size: 65536,
      usage: GPUBufferUsage.STORAGE,
    });
    const module = device.createShaderModule({ label: "keep-awake", code: SOURCE });
    this.#pipeline = device.createComputePipeline({
      label: "keep-awake",
      layout: "auto",
      compute: { module, entryPoint: "main" },
    });
    this.#group = device.createBindGroup({
      label: "keep-awake",
      layout: this.#pipeline.getBindGroupLayout(0),
      entries: [{ binding: 0, resource: { buffer: this.#data } }, {
        binding: 1,
        resource: { buffer: this.#counter },
      }],
    });
    this.#last = performance.now();
    const timer = setInterval(() => this.#tick(), intervalMs);
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }

  /** The buffer whose first u32 counts the dispatches ([4] u32, for checks). */
  get counter(): GPUBuffer {
    return this.#counter;
  }

  /** Whether the periodic dispatches are running. */
  get running(): boolean {
    return this.#timer !== undefined;
  }

  /** Whether the device may be in its slow state: never warmed up, or the ticks lapsed since the last warm-up. */
  get stale(): boolean {
    return this.#stale || performance.now() - this.#last > KEEP_AWAKE_STALE_MS;
  }

  #submit(workgroups: number, dispatches: number): void {
    const enc = this.#device.createCommandEncoder({ label: "keep-awake" });
    const pass = enc.beginComputePass({ label: "keep-awake" });
    pass.setPipeline(this.#pipeline);
    pass.setBindGroup(0, this.#group);
    for (let i = 0; i < dispatches; i++) pass.dispatchWorkgroups(workgroups);
    pass.end();
    this.#device.queue.submit([enc.finish()]);
  }

  #tick(): void {
    const now = performance.now();
    if (now - this.#last > KEEP_AWAKE_STALE_MS) {
      this.#stale = true;
      this.#staleSince = now;
    }
    this.#last = now;
    try {
      this.#submit(1, 1);
    } catch {
      // A lost or destroyed device: nothing left to keep awake.
      this.stop();
    }
  }

  /**
   * Runs saturating work for `ms` milliseconds (in submissions of a few milliseconds each) when the device may be
   * in its slow state (see {@linkcode stale}), or always with `force`. Concurrent calls share one warm-up.
   */
  warmUp(ms = WARM_UP_MS, force = false): Promise<void> {
    if (!force && !this.stale) return Promise.resolve();
    this.#warming ??= (async () => {
      // Submissions grow (64 workgroups, doubling up to 2,048, then more dispatches) until four of them keep the
      // GPU busy for ~100 ms between the awaited round trips (~11 ms each on an H200).
      const t0 = performance.now();
      let size = 1;
      while (performance.now() - t0 < ms) {
        const t = performance.now();
        for (let i = 0; i < 4; i++) this.#submit(Math.min(2048, 64 * size), Math.max(1, size / 32));
        await this.#device.queue.onSubmittedWorkDone();
        if (performance.now() - t < 100 && size < 32 * 2048) size *= 2;
      }
      this.#last = performance.now();
      this.#stale = false;
    })().finally(() => this.#warming = undefined);
    return this.#warming;
  }

  /**
   * Records that the device was busy with submitted work from `since` until now (a readback waited for it, which
   * in Deno blocks the main thread): the ticks that lapsed meanwhile were not idle time, so they do not make the
   * device stale. A staleness found before `since` (or never having warmed up) stays.
   */
  noteBusy(since: number): void {
    if (this.#stale && this.#staleSince >= since) this.#stale = false;
    this.#last = Math.max(this.#last, performance.now());
  }

  /** Stops the periodic dispatches (idempotent). */
  stop(): void {
    if (this.#timer === undefined) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

/** Whether the environment turns keep-awake off (`EDGEMIX_GPU_KEEP_AWAKE=0`); false when env access is denied. */
export function keepAwakeDisabled(): boolean {
  try {
    return Deno.env.get("EDGEMIX_GPU_KEEP_AWAKE") === "0";
  } catch {
    return false;
  }
}
