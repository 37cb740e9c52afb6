import assert from "node:assert/strict";
import { join } from "node:path";
import { toFloat32 } from "./dtype.ts";
import { ModelLoadError } from "./errors.ts";
import { encodeSafetensors, SafetensorsFile } from "./safetensors.ts";

function bytes(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "edgemix-st-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("SafetensorsFile reads f32, f16 and bf16 tensors written by encodeSafetensors", async () => {
  await withDir(async (dir) => {
    const values = new Float32Array([1.5, -2.25, 3e-3, 65504, -0, 0.1]);
    const bf16 = new Uint16Array(values.length);
    const u32 = new Uint32Array(values.buffer);
    for (let i = 0; i < values.length; i++) bf16[i] = u32[i] >>> 16; // truncation: exact for these values' top bits
    const path = join(dir, "m.safetensors");
    await Deno.writeFile(
      path,
      encodeSafetensors({
        a: { dtype: "F32", shape: [2, 3], data: bytes(values) },
        b: { dtype: "F16", shape: [6], data: bytes(new Uint16Array(new Float16Array(values).buffer)) },
        c: { dtype: "BF16", shape: [3, 2], data: bytes(bf16) },
      }, { format: "pt" }),
    );
    const f = await SafetensorsFile.open(path);
    try {
      assert.deepEqual(f.tensors.get("a")!.shape, [2, 3]);
      assert.equal(f.metadata.format, "pt");
      assert.deepEqual(Array.from(toFloat32(await f.read("a"), "F32")), Array.from(values));
      assert.deepEqual(
        Array.from(toFloat32(await f.read("b"), "F16")),
        Array.from(new Float32Array(new Float16Array(values))),
      );
      const c = toFloat32(await f.read("c"), "BF16");
      for (let i = 0; i < values.length; i++) {
        assert.equal(c[i], new Float32Array(new Uint32Array([bf16[i] << 16]).buffer)[0]);
      }
      await assert.rejects(
        f.read("missing"),
        (e: unknown) => e instanceof ModelLoadError && e.tensor === "missing",
      );
    } finally {
      f.close();
    }
  });
});

Deno.test("SafetensorsFile names the file and tensor of a truncated file", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "t.safetensors");
    const full = encodeSafetensors({
      first: { dtype: "F32", shape: [4], data: new Uint8Array(16) },
      second: { dtype: "F32", shape: [100], data: new Uint8Array(400) },
    });
    await Deno.writeFile(path, full.subarray(0, full.length - 50));
    await assert.rejects(SafetensorsFile.open(path), (e: unknown) => {
      assert.ok(e instanceof ModelLoadError);
      assert.equal(e.file, path);
      assert.equal(e.tensor, "second");
      assert.match(e.message, /truncated/);
      return true;
    });
  });
});

Deno.test("SafetensorsFile rejects corrupted headers with errors naming the file", async () => {
  await withDir(async (dir) => {
    const cases: [string, Uint8Array, RegExp][] = [];
    const good = encodeSafetensors({ w: { dtype: "F32", shape: [2], data: new Uint8Array(8) } });
    const badJson = good.slice();
    badJson[10] = 0x7b; // "{" inside the JSON breaks it
    badJson[11] = 0x7b;
    cases.push(["bad-json", badJson, /not valid JSON/]);
    const hugeLen = good.slice();
    new DataView(hugeLen.buffer).setBigUint64(0, 1n << 40n, true);
    cases.push(["huge", hugeLen, /header length/]);
    cases.push(["tiny", new Uint8Array(3), /too short/]);
    const mismatch = new TextEncoder().encode(
      JSON.stringify({ w: { dtype: "F32", shape: [3], data_offsets: [0, 8] } }),
    );
    const m = new Uint8Array(8 + mismatch.length + 8);
    new DataView(m.buffer).setBigUint64(0, BigInt(mismatch.length), true);
    m.set(mismatch, 8);
    cases.push(["mismatch", m, /needs 12/]);
    const dtype = new TextEncoder().encode(
      JSON.stringify({ w: { dtype: "Q9", shape: [1], data_offsets: [0, 1] } }),
    );
    const d = new Uint8Array(8 + dtype.length + 1);
    new DataView(d.buffer).setBigUint64(0, BigInt(dtype.length), true);
    d.set(dtype, 8);
    cases.push(["dtype", d, /unknown dtype/]);
    for (const [name, data, pattern] of cases) {
      const path = join(dir, `${name}.safetensors`);
      await Deno.writeFile(path, data);
      await assert.rejects(SafetensorsFile.open(path), (e: unknown) => {
        assert.ok(e instanceof ModelLoadError, name);
        assert.equal(e.file, path);
        assert.match(e.message, pattern, name);
        return true;
      });
    }
    await assert.rejects(SafetensorsFile.open(join(dir, "absent.safetensors")), /does not exist/);
  });
});

Deno.test("SafetensorsFile serves concurrent reads of different tensors correctly", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "c.safetensors");
    const tensors: Record<string, { dtype: string; shape: number[]; data: Uint8Array }> = {};
    for (let i = 0; i < 16; i++) {
      tensors[`t${i}`] = { dtype: "F32", shape: [300], data: bytes(new Float32Array(300).fill(i)) };
    }
    await Deno.writeFile(path, encodeSafetensors(tensors));
    const f = await SafetensorsFile.open(path);
    try {
      const all = await Promise.all(Object.keys(tensors).map((n) => f.read(n)));
      all.forEach((b, i) => assert.ok(toFloat32(b, "F32").every((v) => v === i), `t${i}`));
    } finally {
      f.close();
    }
  });
});
