// floatzip's GPU decoder for format v2 (docs/FORMAT.md §1), compiled at run time by NVRTC.
//
// One warp decodes one tile (its 32 lanes are the tile's lanes); a block's warps decode tiles of one code,
// whose primary table the block first copies into shared memory. The per-lane work is fz_lane.h's and the
// batch's per-tile setup fz_batch.h's: the same code the CPU decoder and the host emulation of a batch run
// (and the CPU tests check bit for bit); the block's table copy and the warp scan of the lanes' deltas are
// fz_batch.h's warp_tile, shared with the fused GEMV (fz_gemv.cu). Only the tile's error vote is written here.
//
// Everything read from a batch was checked on the host when the batch was prepared (floatzip.decode.cuda):
// tile descriptors, lane lengths, table indices. A corrupt stream can still make a lane run long; the
// batch's code stream is padded by 16 bits per symbol of its longest lane, so such a lane's reads stay in
// the buffer, and its tile is flagged in `errors`.
#include "fz_batch.h"

namespace fz {

constexpr u32 FULL = 0xFFFFFFFFu;

// One block per job. `primaries`: 4096 entries per code; `longcs`, `long_patterns` from `long_at`: the
// long-code tables per code (read only when LONG). R: the raw field width, fixed at compile time for the
// 16-bit dtypes (R = 0: any width, read one field at a time); for F32 the number of coded low planes, whose
// tables (slot `planes_at` of `primaries`, fz_batch.h) the block copies into shared memory beside the code's.
template <int BITS, u32 R, bool LONG>
__global__ void __launch_bounds__(WARPS * 32)
    decode_kernel(const JobDesc* __restrict__ jobs, const TileDesc* __restrict__ tiles,
                  const u32* __restrict__ codes, u64 last_code_word, const u32* __restrict__ raw,
                  const u32* __restrict__ deltas, const u32* __restrict__ primaries,
                  const LongCodes* __restrict__ longcs, const u32* __restrict__ long_patterns,
                  const u64* __restrict__ long_at, u8* __restrict__ out, u32* __restrict__ errors) {
  __shared__ __align__(16) u32 table[1 << PRIMARY_BITS];
  constexpr u32 P = BITS == 32 ? R : 0;
  __shared__ __align__(16) u16 plane_tables[P ? P << PRIMARY_BITS : 8];
  const JobDesc job = jobs[blockIdx.x];
  if constexpr (P != 0) {  // made visible by warp_tile's barrier
    const uint4* src = reinterpret_cast<const uint4*>(primaries + (u64(job.planes_at) << PRIMARY_BITS));
    for (u32 i = threadIdx.x; i < (P << PRIMARY_BITS) / 8; i += WARPS * 32) {
      reinterpret_cast<uint4*>(plane_tables)[i] = src[i];
    }
  }
  WarpTile w;
  if (!warp_tile(job, tiles, deltas, primaries, table, w)) return;
  const TileDesc& d = w.d;
  const u32 tile = w.tile, lane = w.lane, delta = w.delta, before = w.before;
  Code code;
  code.primary = table;
  code.longc = longcs + job.code;
  code.long_pattern = long_patterns + long_at[job.code];
  if constexpr (P != 0) {
    code.planes[0] = plane_tables;
    code.planes[1] = plane_tables + (P > 1 ? (1u << PRIMARY_BITS) : 0);
  }
  const LaneJob lj = tile_lane_job<P>(d, codes, last_code_word, raw, lane, delta, before, 16 / (BITS / 8));
  const bool ok = __all_sync(FULL, batch_lane<BITS, R, LONG>(lj, code, out, d, lane));
  if (lane == 0) errors[tile] = ok ? 0u : 1u;
}

}  // namespace fz
