// floatzip's fused decode-GEMV (docs/KERNELS.md), compiled at run time by NVRTC: Y = X W^T from W's format v2
// record, W decoded in registers (fz_lane.h's lane code) and never written. One warp per tile, as in the
// decoder (fz_decode.cu): a block's warps take consecutive tiles of one code, its primary table in shared
// memory; the lane's words go to fz_gemv.h's sink instead of memory. gemv_finish then adds each row's segments.
//
// Every array and index comes from a host batch that core/gemv.cpp's validate_gemv checked (the decoder's
// batch checks, plus the segment tables, X's and the partials' sizes). A corrupt stream flags its tile.
#include "fz_gemv.h"

namespace fz {

// R: the raw width; NB: rows of X (1..8); F16: W is F16 (else BF16); PATH: 2 when in % 1024 == 0, 1 when
// in % 256 == 0, 0 for any shape (fz_gemv.h's sinks DotAligned<.., true>, DotAligned<.., false>, DotAny).
// x: fp32, X[b, col] at x[col * NB + b]; seg_base: each tile's first segment; partials: [segments][NB] (ALIGNED) or
// [segments][32][NB], zeroed (PATH 0).
template <u32 R, bool LONG, int NB, bool F16, int PATH>
__global__ void __launch_bounds__(WARPS * 32)
    gemv_kernel(const JobDesc* __restrict__ jobs, const TileDesc* __restrict__ tiles, const u32* __restrict__ codes,
                u64 last_code_word, const u32* __restrict__ raw, const u32* __restrict__ deltas,
                const u32* __restrict__ primaries, const LongCodes* __restrict__ longcs,
                const u32* __restrict__ long_patterns, const u64* __restrict__ long_at, const float* __restrict__ x,
                u64 in, const u64* __restrict__ seg_base, float* __restrict__ partials,
                u32* __restrict__ errors) {
  __shared__ __align__(16) u32 table[1 << PRIMARY_BITS];
  const JobDesc job = jobs[blockIdx.x];
  WarpTile w;
  if (!warp_tile(job, tiles, deltas, primaries, table, w)) return;
  const TileDesc& d = w.d;
  const u32 tile = w.tile, lane = w.lane, delta = w.delta, before = w.before;
  Code code;
  code.primary = table;
  code.longc = longcs + job.code;
  code.long_pattern = long_patterns + long_at[job.code];
  const LaneJob lj = tile_lane_job(d, codes, last_code_word, raw, lane, delta, before, 8);
  const u64 flat = d.out_byte / 2;
  bool ok;
  if constexpr (PATH != 0) {
    DotAligned<NB, F16, PATH == 2> sink;
    sink.init(x, NB, u32(in), flat, seg_base[tile], partials, lane);
    ok = gemv_lane<R, LONG>(lj, code, sink, flat, d.full_steps);
  } else {
    DotAny<NB, F16> sink;
    sink.init(x, NB, u32(in), flat, seg_base[tile], partials, lane);
    ok = gemv_lane<R, LONG>(lj, code, sink, flat, d.full_steps);
  }
  ok = __all_sync(0xFFFFFFFFu, ok);
  if (lane == 0) errors[tile] = ok ? 0u : 1u;
}

// y[b * y_stride + r] for every row r of W and row b of X: the row's segments [row_seg[r], row_seg[r + 1]).
__global__ void gemv_finish(const float* __restrict__ partials, u32 lanes, const u64* __restrict__ row_seg, u64 rows,
                            u32 nb, float* __restrict__ y, u64 y_stride) {
  const u64 i = u64(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * nb) return;
  const u64 r = i / nb;
  const u32 b = u32(i - r * nb);
  y[b * y_stride + r] = gemv_row(partials, lanes, row_seg[r], row_seg[r + 1], nb, b);
}

}  // namespace fz
