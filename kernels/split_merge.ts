/**
 * The merge of split-K attention partials (flash-decoding's second pass), shared by the plain and the GEAR
 * cache: each split wrote its unnormalized accumulator over `hd` channels, its running max m_z and its running
 * sum l_z; the merge computes, per (row, head) and channel c,
 *
 *   M = max_z m_z,   out[c] = Σ_z acc_z[c] · exp(m_z − M) / Σ_z l_z · exp(m_z − M).
 *
 * At long contexts there are hundreds of splits (512 at 32k keys with 64 keys per split), so one workgroup per
 * (row, head) walking them serially leaves the GPU idle and costs more than the splits themselves. Here a
 * workgroup of 256 threads takes {@linkcode MERGE_CHANNELS} channels of one (row, head): all of its threads
 * reduce M and the denominator over the splits, then 16 split lanes × 16 channels sum the numerators and
 * reduce over the lanes in workgroup memory.
 *
 * @module
 */

/** Channels one merge workgroup writes; the grid's x is heads × ⌈hd / MERGE_CHANNELS⌉. */
export const MERGE_CHANNELS = 16;

const LANES = 16;
const WG = MERGE_CHANNELS * LANES;

/** Workgroups along x of a merge dispatch: one per (head, block of {@linkcode MERGE_CHANNELS} channels). */
export function mergeGroupsX(nH: number, hd: number): number {
  return nH * Math.ceil(hd / MERGE_CHANNELS);
}

/**
 * WGSL of the merge's entry point, for a kernel whose prelude (with `st`) and bindings `part` (partials,
 * [.., splits, hd + 2] f32: accumulators, then m, then l) and `out` (f32) are declared by the caller.
 * `prologue` is WGSL that, given `h` (head), `r` (row) and `b` (wg.z), defines `used` (splits to merge),
 * `base` (index of the first split's partial) and `ob` (index of the row-head's first output float).
 */
export function splitMergeMain(hd: number, prologue: string): string {
  if (!Number.isInteger(hd) || hd < 1) throw new RangeError(`Cannot build the merge: bad head width ${hd}`);
  return `
const MD: u32 = ${hd}u;
const MNCB: u32 = ${Math.ceil(hd / MERGE_CHANNELS)}u;
var<workgroup> mred: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let h = wg.x / MNCB;
  let cb = wg.x % MNCB;
  let r = wg.y;
  let b = wg.z;
  if (r >= st.rows) { return; }
  ${prologue}
  // M over the splits.
  var mx = -3.0e38;
  for (var z = li; z < used; z += ${WG}u) { mx = max(mx, part[(base + z) * (MD + 2u) + MD]); }
  mred[li] = mx;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { mred[li] = max(mred[li], mred[li + s]); }
    workgroupBarrier();
  }
  mx = mred[0];
  workgroupBarrier();
  // The denominator.
  var l = 0.0;
  for (var z = li; z < used; z += ${WG}u) {
    let o = (base + z) * (MD + 2u);
    l += part[o + MD + 1u] * exp(part[o + MD] - mx);
  }
  mred[li] = l;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { mred[li] += mred[li + s]; }
    workgroupBarrier();
  }
  l = mred[0];
  workgroupBarrier();
  // Numerators: split lane li / ${MERGE_CHANNELS} over channel cb·${MERGE_CHANNELS} + li % ${MERGE_CHANNELS}.
  let c = cb * ${MERGE_CHANNELS}u + li % ${MERGE_CHANNELS}u;
  var a = 0.0;
  if (c < MD) {
    for (var z = li / ${MERGE_CHANNELS}u; z < used; z += ${LANES}u) {
      let o = (base + z) * (MD + 2u);
      a += part[o + c] * exp(part[o + MD] - mx);
    }
  }
  mred[li] = a;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s >= ${MERGE_CHANNELS}u; s >>= 1u) {
    if (li < s) { mred[li] += mred[li + s]; }
    workgroupBarrier();
  }
  if (li < ${MERGE_CHANNELS}u && c < MD) { out[ob + c] = mred[li] / l; }
}`;
}

/**
 * WGSL that ends a split-K tile kernel whose value threads form KG key groups × D4 vec4 columns: threads li < D4
 * add the groups' sums in `vred` ([KG, D4] vec4), then run `extra` (WGSL that may add to `a`), and write the
 * partial's accumulators at `po` of `out`; thread 0 writes the running max `m` and the sum of the groups'
 * probability sums in `lred` ([KG]) after them. `hd` names the head width constant.
 */
export function writePartialWgsl(hd: string, extra = ""): string {
  return `if (li < D4) {
    var a = vec4<f32>(0.0);
    for (var g = 0u; g < KG; g++) { a += vred[g * D4 + li]; }
    ${extra}
    out[po + 4u * li] = a.x;
    out[po + 4u * li + 1u] = a.y;
    out[po + 4u * li + 2u] = a.z;
    out[po + 4u * li + 3u] = a.w;
  }
  if (li == 0u) {
    var l = 0.0;
    for (var g = 0u; g < KG; g++) { l += lred[g]; }
    out[po + ${hd}] = m;
    out[po + ${hd} + 1u] = l;
  }`;
}
