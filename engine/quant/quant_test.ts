import assert from "node:assert/strict";
import { dequantize, packLevels, unpackLevels } from "./pack.ts";
import { quantizeGptq, quantizeRtn } from "./quantize.ts";
import { parseScheme, schemeName, storedBitsPerWeight } from "./scheme.ts";

function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13, s >>>= 0, s ^= s >>> 17, s ^= s << 5, s >>>= 0;
    return s / 4294967296;
  };
}
function gauss(r: () => number): number {
  return Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
}

Deno.test("parseScheme reads f16 and w{bits}g{group}; storedBitsPerWeight counts scales, minimums and padding", () => {
  assert.deepEqual(parseScheme("w4g128"), { kind: "q", bits: 4, group: 128 });
  assert.deepEqual(parseScheme("w2g64"), { kind: "q", bits: 2, group: 64 });
  assert.deepEqual(parseScheme("w8"), { kind: "q", bits: 8, group: 128 });
  assert.equal(schemeName(parseScheme("f16")), "f16");
  assert.throws(() => parseScheme("w5g128"), RangeError);
  assert.throws(() => parseScheme("w4g12"), RangeError);
  assert.equal(storedBitsPerWeight(parseScheme("w4g128"), 2048), 4.25);
  assert.equal(storedBitsPerWeight(parseScheme("w2g64"), 2048), 2.5);
  assert.equal(storedBitsPerWeight(parseScheme("w8g128"), 2048), 8.25);
  assert.equal(storedBitsPerWeight(parseScheme("w3g128"), 2048), 3.25);
  assert.equal(storedBitsPerWeight(parseScheme("w3g64"), 2048), 3.5);
  // A 3-bit group of 40: 3 words of low bits and 2 of high bits, then the parameters.
  assert.equal(storedBitsPerWeight(parseScheme("w3g40"), 80), (5 * 32 + 32) / 40);
});

Deno.test("3-bit levels are stored in bit planes per block of 128 values", () => {
  const q = new Uint8Array(192);
  // Value 37: unit 1, octet 0, place 5; 0b101: low bits 01 in word 2 at bit 20, high bit in word 8 + 1 at bit 20.
  q[37] = 5;
  // Value 58: unit 1, octet 3, place 2; 0b011: low bits 11 in word 3 at bit 10, high bit 0.
  q[58] = 3;
  // Value 130: second block (64 values: 4 low words, 2 high), unit 0, octet 0, place 2; 0b110: low 10 in word
  // 12 at bit 8, high bit in word 12 + 4 at bit 8.
  q[130] = 6;
  const w = packLevels(q, 1, 192, 3, 192);
  assert.equal(w.length, 18);
  const want = new Uint32Array(18);
  want[2] = 1 << 20;
  want[9] = 1 << 20;
  want[3] = 3 << 10;
  want[12] = 2 << 8;
  want[16] = 1 << 8;
  assert.deepEqual(w, want);
  // An octet's levels as a word of 4-bit fields: two masks and an or.
  const lv = new Uint8Array(128).map((_, i) => (i * 7 + 3) % 8);
  const b = packLevels(lv, 1, 128, 3, 128);
  for (let u = 0; u < 4; u++) {
    for (let o = 0; o < 4; o++) {
      const lo = b[2 * u + (o >> 1)], hi = b[8 + u];
      const h = o <= 2 ? hi << (2 - o) : hi >>> 1;
      const nib = (((lo >>> (2 * (o & 1))) & 0x33333333) | (h & 0x44444444)) >>> 0;
      for (let p = 0; p < 8; p++) assert.equal((nib >>> (4 * p)) & 15, lv[32 * u + 8 * o + p]);
    }
  }
});

Deno.test("packLevels and unpackLevels round-trip exactly for 2, 3, 4 and 8 bits", () => {
  const r = rng(1);
  for (const bits of [2, 3, 4, 8]) {
    for (const [rows, cols, group] of [[3, 128, 128], [5, 192, 64], [1, 40, 8], [2, 80, 40], [2, 384, 192]]) {
      const q = new Uint8Array(rows * cols).map(() => Math.floor(r() * (1 << bits)));
      const packed = packLevels(q, rows, cols, bits, group);
      assert.deepEqual(
        unpackLevels(packed, rows, cols, bits, group),
        q,
        `bits ${bits} [${rows},${cols}] g${group}`,
      );
    }
  }
  assert.throws(() => packLevels(new Uint8Array([4]), 1, 8, 2, 8), RangeError);
  assert.throws(() => packLevels(new Uint8Array(10), 1, 10, 4, 8), /not a multiple/);
});

Deno.test("RTN: dequant(quant(W)) is within half a step (plus f16 rounding) of W", () => {
  const r = rng(2);
  for (const bits of [2, 3, 4, 8]) {
    const rows = 8, cols = 256, group = 64;
    const w = Float32Array.from({ length: rows * cols }, () => gauss(r) * 0.05);
    const m = quantizeRtn(w, rows, cols, bits, group);
    const d = dequantize(m);
    const scales = new Float32Array(new Float16Array(m.scales.buffer));
    for (let i = 0; i < w.length; i++) {
      const s = scales[Math.floor(i / group)];
      assert.ok(
        Math.abs(d[i] - w[i]) <= s / 2 + 1e-3 * Math.abs(w[i]) + 1e-6,
        `bits ${bits} at ${i}: ${d[i]} vs ${w[i]} step ${s}`,
      );
    }
  }
});

Deno.test("GPTQ's output error on calibration data is at most RTN's, with and without act-order", () => {
  const r = rng(3);
  const rows = 32, cols = 128, n = 256;
  // Correlated calibration inputs with unequal channel scales: where GPTQ helps.
  const x = new Float64Array(n * cols);
  for (let t = 0; t < n; t++) {
    const base = gauss(r);
    for (let c = 0; c < cols; c++) x[t * cols + c] = (0.6 * base + gauss(r)) * (1 + (c % 7));
  }
  const h = new Float64Array(cols * cols);
  for (let t = 0; t < n; t++) {
    for (let i = 0; i < cols; i++) {
      for (let j = 0; j < cols; j++) h[i * cols + j] += x[t * cols + i] * x[t * cols + j];
    }
  }
  const w = Float32Array.from({ length: rows * cols }, () => gauss(r) * 0.05);
  const outErr = (wq: Float32Array) => {
    let e = 0;
    for (let t = 0; t < n; t++) {
      for (let o = 0; o < rows; o++) {
        let d = 0;
        for (let c = 0; c < cols; c++) d += x[t * cols + c] * (wq[o * cols + c] - w[o * cols + c]);
        e += d * d;
      }
    }
    return e;
  };
  for (const bits of [2, 3, 4]) {
    for (const group of [32, 128]) {
      const rtn = outErr(dequantize(quantizeRtn(w, rows, cols, bits, group)));
      const gptq = outErr(dequantize(quantizeGptq(w, rows, cols, h, bits, group)));
      const gptqAct = outErr(dequantize(quantizeGptq(w, rows, cols, h, bits, group, { actOrder: true })));
      assert.ok(gptq <= rtn, `w${bits}g${group}: GPTQ ${gptq} > RTN ${rtn}`);
      assert.ok(gptqAct <= rtn, `w${bits}g${group}: GPTQ act-order ${gptqAct} > RTN ${rtn}`);
    }
  }
});
