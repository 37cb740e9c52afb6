/**
 * Conversions between the element types of checkpoints (f32, f16, bf16) and the types the backends compute in.
 *
 * @module
 */

/** Element types a safetensors file may hold that the engine reads as floating point. */
export type FloatDType = "F32" | "F16" | "BF16";

/** Bytes per element of each safetensors dtype the format defines. */
export const DTYPE_BYTES: Readonly<Record<string, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

/** Float32 values of raw little-endian `bytes` of type `dtype` (a copy; the input is not kept). */
export function toFloat32(bytes: Uint8Array, dtype: FloatDType): Float32Array {
  const n = bytes.byteLength / (dtype === "F32" ? 4 : 2);
  // Copy into an aligned buffer first: tensor data in a file need not be 4-byte aligned.
  const aligned = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  if (dtype === "F32") return new Float32Array(aligned.buffer, aligned.byteOffset, n).slice();
  const u16 = new Uint16Array(aligned.buffer, aligned.byteOffset, n);
  if (dtype === "F16") return new Float32Array(new Float16Array(u16.buffer, u16.byteOffset, n));
  const u32 = new Uint32Array(n);
  for (let i = 0; i < n; i++) u32[i] = u16[i] << 16;
  return new Float32Array(u32.buffer);
}

/** Float16 bit patterns of raw little-endian `bytes` of type `dtype`, rounded to nearest even. */
export function toFloat16Bits(bytes: Uint8Array, dtype: FloatDType): Uint16Array {
  if (dtype === "F16") {
    const copy = bytes.slice();
    return new Uint16Array(copy.buffer, 0, copy.byteLength / 2);
  }
  const f16 = new Float16Array(toFloat32(bytes, dtype));
  return new Uint16Array(f16.buffer);
}

/** Float16 bit patterns of `values`, rounded to nearest even. */
export function float32ToFloat16Bits(values: Float32Array): Uint16Array {
  return new Uint16Array(new Float16Array(values).buffer);
}
