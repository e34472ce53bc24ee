// A decode batch: many tensors' tiles, laid out for one launch per kernel specialisation
// (floatzip.decode.cuda builds it; fz_decode.cu decodes it on the GPU; floatzip._core.decode_batch_host
// decodes the very same arrays on the CPU, so the tests check the batch's construction bit for bit).
#pragma once

#include "fz_lane.h"

namespace fz {

constexpr int WARPS = 4;  // tiles (warps) per block

struct TileDesc {  // 48 bytes
  u64 code_bit;    // first code bit of the tile in the batch's code stream
  u64 raw_word;    // first raw word of the tile in the batch's raw stream
  u64 out_byte;    // byte offset of the tile's first element in the output buffer (16-aligned)
  u64 delta_word;  // first word of the tile's lane deltas
  u32 lanes;       // lane base length | delta width << 27
  u32 full_steps;  // steps every lane decodes
  u32 tail;        // elements after the full steps
  u32 shift;       // mantissa bits below the symbol, | coded low planes << 8 (F32, blob version 3)
};

FZ_HD u32 tile_shift(const TileDesc& d) { return d.shift & 255u; }
FZ_HD u32 tile_planes(const TileDesc& d) { return d.shift >> 8; }
// Bits of a tile's raw fields: the sign and the mantissa bits between the planes and the symbol.
FZ_HD u32 tile_raw_bits(const TileDesc& d) { return tile_shift(d) + 1 - 8 * tile_planes(d); }

struct JobDesc {   // 16 bytes: one block's work
  u32 first_tile;  // tiles [first_tile, first_tile + n_tiles), all of one code
  u32 n_tiles;     // 1..WARPS
  u32 code;        // index of their code (primary table, long codes)
  u32 planes_at;   // F32 with coded planes: the slot of `primaries` (4096 words) holding the code's plane
                   // tables, 4096 16-bit entries each, in lane order (fz_lane.h's Code::planes); else 0
};

// The delta of `lane` (width bits, LSB-first, lane after lane, from the tile's first delta word).
FZ_HD u32 lane_delta(const TileDesc& d, const u32* deltas, u32 lane) {
  const u32 width = d.lanes >> 27;
  if (!width) return 0;
  const u32 bit = lane * width, q = bit >> 5, o = bit & 31;
  const u64 two = u64(deltas[d.delta_word + q]) | (u64(deltas[d.delta_word + q + (o + width > 32)]) << 32);
  return u32(two >> o) & ((1u << width) - 1);
}

// The lane's job, given its delta and the sum of the deltas of the lanes before it. P: the tile's coded low
// planes, fixed by the kernel (validate_batch checks that every tile of a launch has that many).
template <u32 P = 0>
FZ_HD LaneJob tile_lane_job(const TileDesc& d, const u32* codes, u64 last_code_word, const u32* raw, u32 lane,
                            u32 delta, u32 before, u32 group) {
  const u32 base = d.lanes & ((1u << 27) - 1);
  LaneJob job;
  job.codes = codes;
  job.last_code_word = last_code_word;
  job.start = d.code_bit + u64(lane) * base + before;
  job.end = job.start + base + delta;
  job.raw = raw + d.raw_word + lane;
  job.raw_stride = 32;
  const u32 shift = P ? tile_shift(d) : d.shift;  // without planes, d.shift is the shift alone
  const u64 lane_words = (u64(d.full_steps) * group * (shift + 1 - 8 * P) + 31) / 32;
  job.tail_raw = raw + d.raw_word + 32 * lane_words;
  job.full_steps = d.full_steps;
  const int extra = int(d.tail) - int(group * lane);
  job.tail_count = extra <= 0 ? 0 : (extra > int(group) ? group : u32(extra));
  job.tail_first = u64(lane) * group;
  job.shift = shift;
  return job;
}

// One lane of a batch tile, for the kernel's specialisation (BITS, R, LONG): R is the raw width for the
// 16-bit dtypes (0: any), the number of coded low planes for F32. Returns whether the lane ended exactly at
// its end bit.
template <int BITS, u32 R, bool LONG>
FZ_HD bool batch_lane(const LaneJob& job, const Code& code, u8* out, const TileDesc& d, u32 lane) {
  constexpr u32 item = BITS / 8, group = 16 / item;
  u8* o = out + d.out_byte;
  u8* lane_out = o + u64(lane) * group * item;
  u8* tail_out = o + (u64(d.full_steps) * 32 * group + u64(lane) * group) * item;
  if (job.full_steps == 0 && job.tail_count == 0) return job.start == job.end;
  if constexpr (BITS == 16 && R != 0) {
    return lane16_fast<R, LONG>(job, code, reinterpret_cast<u16*>(lane_out), 32 * group,
                                reinterpret_cast<u16*>(tail_out));
  } else if constexpr (BITS == 16) {
    return decode_lane_any<u16, LONG>(job, code, group, reinterpret_cast<u16*>(lane_out), 32 * group,
                                      reinterpret_cast<u16*>(tail_out));
  } else if constexpr (BITS == 32 && R != 0) {
    return decode_lane_planes<R, LONG>(job, code, reinterpret_cast<u32*>(lane_out), 32 * group,
                                       reinterpret_cast<u32*>(tail_out));
  } else if constexpr (BITS == 32) {
    return decode_lane_any<u32, LONG>(job, code, group, reinterpret_cast<u32*>(lane_out), 32 * group,
                                      reinterpret_cast<u32*>(tail_out));
  } else {
    return decode_lane_any<u8, LONG>(job, code, group, lane_out, 32 * group, tail_out);
  }
}

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// What every kernel over a batch does first (the decoder, fz_decode.cu, and the fused GEMV, fz_gemv.cu): the
// block copies its job's primary table into shared memory; each warp takes its tile and scans its lanes'
// deltas into each lane's start offset. Returns false for a warp past the job's tiles (it has nothing to do).
struct WarpTile {
  u32 tile, lane, delta, before;
  TileDesc d;
};

__device__ __forceinline__ bool warp_tile(const JobDesc& job, const TileDesc* __restrict__ tiles,
                                          const u32* __restrict__ deltas, const u32* __restrict__ primaries,
                                          u32* table, WarpTile& w) {
  const uint4* src = reinterpret_cast<const uint4*>(primaries + (u64(job.code) << PRIMARY_BITS));
  for (u32 i = threadIdx.x; i < (1u << PRIMARY_BITS) / 4; i += WARPS * 32) {
    reinterpret_cast<uint4*>(table)[i] = src[i];
  }
  __syncthreads();
  const u32 warp = threadIdx.x >> 5;
  w.lane = threadIdx.x & 31;
  if (warp >= job.n_tiles) return false;
  w.tile = job.first_tile + warp;
  w.d = tiles[w.tile];
  w.delta = lane_delta(w.d, deltas, w.lane);
  u32 before = w.delta;  // inclusive scan of the deltas over the lanes
  FZ_UNROLL
  for (int s = 1; s < 32; s <<= 1) {
    const u32 v = __shfl_up_sync(0xFFFFFFFFu, before, s);
    if (w.lane >= u32(s)) before += v;
  }
  w.before = before - w.delta;
  return true;
}
#endif

}  // namespace fz
