/**
 * Whether WGSL's `dot4I8Packed` runs as a hardware integer dot product on the adapter: the same multiply-adds
 * (four per call, 2^20 threads × 4,096 iterations × 4 calls) done with `dot4I8Packed` and with levels unpacked
 * to floats (`unpack4xU8` of masked nibbles, `unpack4xI8` of the activations, a float `dot`), each timed over
 * five dispatches after a warm-up. Prints the language features, the adapter's features and the rate of each
 * (multiply-adds per second). Where naga lowers the builtin to a polyfill the integer form is no faster.
 *
 * ```sh
 * deno run -A bench/int_dot_probe.ts [--threads 1048576] [--iters 4096]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";

const { values } = parseArgs({
  args: Deno.args,
  options: { threads: { type: "string" }, iters: { type: "string" } },
});
const threads = Number(values.threads ?? 1 << 20), iters = Number(values.iters ?? 4096);
if (!Number.isInteger(threads) || threads <= 0 || threads % 256 !== 0) {
  throw new RangeError(`Cannot probe: --threads ${values.threads} must be a positive multiple of 256`);
}
if (!Number.isInteger(iters) || iters <= 0) {
  throw new RangeError(`Cannot probe: --iters ${values.iters} must be a positive whole number`);
}

const adapter = await navigator.gpu.requestAdapter();
if (!adapter) throw new Error("Cannot probe: no WebGPU adapter");
// Deno's types lack GPU.wgslLanguageFeatures; the runtime has it.
const languageFeatures = (navigator.gpu as GPU & { wgslLanguageFeatures?: Set<string> }).wgslLanguageFeatures;
console.log("WGSL language features:", [...(languageFeatures ?? [])].join(", "));
console.log("adapter features:", [...adapter.features].join(", "));
const device = await adapter.requestDevice();

/** WGSL of the probe: four dot products of four pairs per iteration, integer or through floats. */
function probeWgsl(kind: "int" | "float"): string {
  const body = kind === "int"
    ? `ai += dot4I8Packed(a, b); ai += dot4I8Packed(b, a ^ i); ai += dot4I8Packed(a + i, b); ai += dot4I8Packed(b + i, a);`
    : `af += dot(vec4<f32>(unpack4xU8(a & 0x0f0f0f0fu)), vec4<f32>(unpack4xI8(b)));
    af += dot(vec4<f32>(unpack4xU8((a >> 4u) & 0x0f0f0f0fu)), vec4<f32>(unpack4xI8(b ^ i)));
    af += dot(vec4<f32>(unpack4xU8(a & 0x0f0f0f0fu)), vec4<f32>(unpack4xI8(b + i)));
    af += dot(vec4<f32>(unpack4xU8((a >> 4u) & 0x0f0f0f0fu)), vec4<f32>(unpack4xI8(b - i)));`;
  return `
// out: [threads] u32, one value per thread (keeps the loop live).
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  var a = g.x * 2654435761u;
  let b = g.x ^ 0x9e3779b9u;
  var ai = 0i;
  var af = 0.0;
  for (var i = 0u; i < ${iters}u; i++) {
    ${body}
    a = a * 1664525u + 1013904223u;
  }
  out[g.x] = u32(ai) + u32(af);
}`;
}

// [threads] u32: each thread's result.
const out = device.createBuffer({
  label: "int-dot-probe.out",
  size: threads * 4,
  usage: GPUBufferUsage.STORAGE,
});
for (const kind of ["int", "float"] as const) {
  const module = device.createShaderModule({ label: `int-dot-probe.${kind}`, code: probeWgsl(kind) });
  const pipeline = device.createComputePipeline({
    label: `int-dot-probe.${kind}`,
    layout: "auto",
    compute: { module, entryPoint: "main" },
  });
  const group = device.createBindGroup({
    label: `int-dot-probe.${kind}`,
    layout: pipeline.getBindGroupLayout(0),
    entries: [{ binding: 0, resource: { buffer: out } }],
  });
  const dispatch = async () => {
    const enc = device.createCommandEncoder({ label: `int-dot-probe.${kind}` });
    const pass = enc.beginComputePass({ label: `int-dot-probe.${kind}` });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(threads / 256);
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
  await dispatch();
  const t0 = performance.now();
  for (let r = 0; r < 5; r++) await dispatch();
  const ms = (performance.now() - t0) / 5;
  const macs = threads * iters * 16;
  console.log(`${kind}: ${ms.toFixed(2)} ms per dispatch, ${(macs / ms / 1e9).toFixed(3)} T multiply-adds/s`);
}
device.destroy();
