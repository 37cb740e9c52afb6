/**
 * How a GEAR segment is fitted, shared by the compress kernel (`gear_compress.ts`) and its CPU reference
 * (`cpu/gear.ts`): the policy, its default and the range grid of the least-squares fit. The store format is the
 * same whatever the policy; only which codes, ranges, outliers and factors are written changes.
 *
 * @module
 */

/**
 * How a compressed segment is fitted (the store format is the same either way):
 * - `fit`: "minmax" takes the group's range without its outliers (KIVI); "mse" takes, among the shrinks of that
 *   range on a grid (each end moved in by 0..7/32 of it), the one whose codes have the least squared error.
 * - `refits`: rounds of quantizing X − L again (L the low-rank part fitted so far) and refitting L to the new
 *   residual, which lowers ‖X − D − L − S‖ further (none where a segment has no low-rank part).
 */
export interface GearFitPolicy {
  /** How a group's range is chosen. */
  fit: "minmax" | "mse";
  /** Rounds of refitting the quantized part to X − L and L to the new residual (a whole number ≥ 0). */
  refits: number;
}

/** The policy used when none is given: the KIVI min/max range, no refits. */
export const GEAR_FIT_DEFAULT: GearFitPolicy = { fit: "minmax", refits: 0 };

/** Grid steps of the "mse" fit per end of the range (each end moves in by 0..FIT_STEPS − 1 steps). */
export const FIT_STEPS = 8;

/** One step of the "mse" fit's grid, as a share of the min/max range: 1/32 (exact in f32). */
export const FIT_STEP = 0.25 / FIT_STEPS;

/** Most refit rounds a policy may ask for (each costs a quantization pass and a power iteration). */
export const MAX_REFITS = 8;

/** Throws a TypeError or RangeError saying why `policy` cannot be used to compress a segment. */
export function checkFitPolicy(policy: GearFitPolicy): void {
  if (typeof policy !== "object" || policy === null) {
    throw new TypeError(`Cannot compress with fit policy ${JSON.stringify(policy)}: expected an object`);
  }
  if (policy.fit !== "minmax" && policy.fit !== "mse") {
    throw new TypeError(
      `Cannot compress with fit ${JSON.stringify(policy.fit)}: expected "minmax" or "mse"`,
    );
  }
  if (!Number.isInteger(policy.refits) || policy.refits < 0 || policy.refits > MAX_REFITS) {
    throw new RangeError(
      `Cannot compress with ${policy.refits} refits: expected a whole number in [0, ${MAX_REFITS}]`,
    );
  }
}
