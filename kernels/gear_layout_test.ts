import assert from "node:assert/strict";
import { f16Bits, f16Value } from "./cpu/gear.ts";
import { encodeOutlier, gearLayout } from "./gear_layout.ts";

Deno.test("encodeOutlier keeps the index and the value to 4 significant bits (within 1/16, saturating at 61440)", () => {
  const rng = (() => {
    let s = 7;
    return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  })();
  for (let i = 0; i < 2000; i++) {
    const idx = Math.floor(rng() * 128);
    const x = (rng() < 0.5 ? -1 : 1) * Math.exp((rng() - 0.5) * 20);
    const e = encodeOutlier(idx, f16Bits(x));
    assert.ok(e >= 0 && e <= 0xffff);
    assert.equal(e & 0x7f, idx);
    const v = f16Value(e & 0xff80);
    const xf16 = f16Value(f16Bits(x));
    if (Math.abs(xf16) >= 6.2e-5 && Math.abs(xf16) <= 61440) {
      assert.ok(Math.abs(v - xf16) <= Math.abs(xf16) / 16 + 1e-12, `${x} -> ${v}`);
    }
    assert.equal(Math.sign(v) || Math.sign(xf16), Math.sign(xf16) || Math.sign(v));
  }
  assert.equal(f16Value(encodeOutlier(0, f16Bits(65504)) & 0xff80), 61440);
  assert.equal(f16Value(encodeOutlier(0, f16Bits(-1e9)) & 0xff80), -61440);
  assert.equal(encodeOutlier(5, f16Bits(0)) & 0xff80, 0);
});

Deno.test("gearLayout: 2-bit gear of a 128-wide head holds 48 bytes per token for K and for V, plus per-segment P", () => {
  const l = gearLayout({
    batch: 1,
    nKV: 1,
    hd: 128,
    capacity: 4096,
    bits: 2,
    group: 64,
    buffer: 64,
    rMax: 4,
    outliers: 0.02,
    maxRows: 1,
  });
  const perTokenWords = (l.off.codesV - l.off.codesK) + (l.off.parV - l.off.parK) +
    (l.off.qV - l.off.qK) + (l.off.outV - l.off.outK);
  // K: codes 8 words, scale/min 2 words, Q 1 word (4 int8), outliers 1 word (two u16 per 64 tokens · 128 ch).
  assert.equal(perTokenWords / l.T, 8 + 2 + 1 + 1);
  assert.equal(l.MW, 1); // two value outliers (one per 64-channel group) share a word
  assert.equal(l.PW, (129 * 4) / 2); // P [128, 4] and 4 column scales of Q, f16
  assert.throws(() => gearLayout({ ...l, hd: 63 }), RangeError);
  assert.doesNotThrow(() => gearLayout({ ...l, hd: 63, outliers: 0 }));
});
