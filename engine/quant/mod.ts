/**
 * MxMoE mixed-precision expert quantization: schemes, the packed format, RTN and GPTQ, calibration, the kernel
 * cost table, the per-layer allocation, `quantizeModel` and the quality comparison.
 *
 * @module
 */

export { parseScheme, type QuantScheme, schemeName, storedBitsPerWeight } from "./scheme.ts";
export { dequantize, levelBits, PACKED_FORMAT, type PackedMatrix, packLevels, unpackLevels } from "./pack.ts";
export { type GptqOptions, quantizeGptq, quantizeRtn } from "./quantize.ts";
export { calibrate, type Calibration } from "./calibrate.ts";
export {
  bytesModelCosts,
  COST_KERNELS,
  type CostShape,
  type CostTable,
  lookupCost,
  measureCosts,
  measurePathCosts,
  type PathCosts,
} from "./cost.ts";
export { allocateLayer, allocateModel, type Allocation, type Block, type Candidate } from "./allocate.ts";
export {
  effectiveScheme,
  type QuantizationReport,
  quantizeModel,
  type QuantizeModelOptions,
} from "./quantize_model.ts";
export { compareModels, type QualityReport } from "./quality.ts";
