// floatzip's fused decode-GEMV: Y = X W^T straight from W's format v2 record (docs/KERNELS.md), shared by
// the CUDA kernel (fz_gemv.cu, NVRTC) and its host twin (core/gemv.cpp), which runs the same per-lane code
// lane after lane, so that the CPU tests check the GPU's arithmetic, operation for operation.
//
// W is [rows, in], 16-bit (BF16 or F16); X is fp32 with nb = 1..8 rows, stored column-major: X[b, col] at
// x[col * nb + b] (so the nb values a weight meets are adjacent, and a step's 8 * nb are one run). A lane
// decodes its weights with fz_lane.h's lane16_run and hands them to a *sink* that multiplies them into fp32
// accumulators, one per row of X, with fused multiply-adds in element order. The summation order, which the
// GPU and the twin both follow and the tests pin down bit for bit:
//   1. lane c of tile t accumulates, in its own element order, the products of one row of W: its *lane
//      partial* of segment (t, row), starting from 0;
//   2. the 32 lane partials of a segment are added as a tree: v[c] += v[c + s] for s = 16, 8, 4, 2, 1
//      (the warp's butterfly: __shfl_xor_sync; fp32 addition commutes, so every lane holds v[0]);
//   3. a row's segments (the tiles it spans, in tile order) are added left to right: the row's y.
// Everything the kernel reads by an index was checked on the host (core/gemv.cpp: validate_gemv).
#pragma once

#include "fz_batch.h"

namespace fz {

constexpr u32 GEMV_MAX_BATCH = 8;
constexpr u32 GEMV_STEP = 32 * 8;  // elements a warp's step covers (16-bit dtypes)

FZ_HD float f32_bits(u32 b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  __builtin_memcpy(&f, &b, 4);
  return f;
#endif
}

// a * b + c rounded once, on both sides (the host's fmaf is the correctly rounded fused operation too)
FZ_HD float fz_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}

FZ_HD float fz_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);  // never contracted into a neighbouring multiply
#else
  return a + b;
#endif
}

// A 16-bit word as fp32 (exact): BF16 is the top half of an fp32; F16 is widened (subnormals kept).
template <bool F16>
FZ_HD float widen(u32 h) {
  if constexpr (!F16) {
    return f32_bits(h << 16);
  } else {
#if defined(__CUDA_ARCH__)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(u16(h)));
    return f;
#else
    const u32 sign = (h & 0x8000u) << 16, e = (h >> 10) & 31u, m = h & 0x3FFu;
    if (e == 31) return f32_bits(sign | 0x7F800000u | (m << 13));
    if (e != 0) return f32_bits(sign | ((e + 112) << 23) | (m << 13));
    const float mag = float(m) * f32_bits(0x33800000u);  // m * 2^-24, exact
    return sign ? -mag : mag;
#endif
  }
}

// The low and high elements of a packed pair (element 2i low, 2i + 1 high).
template <bool F16>
FZ_HD float widen_lo(u32 w) {
  if constexpr (!F16) return f32_bits(w << 16);
  else return widen<true>(w & 0xFFFFu);
}
template <bool F16>
FZ_HD float widen_hi(u32 w) {
  if constexpr (!F16) return f32_bits(w & 0xFFFF0000u);
  else return widen<true>(w >> 16);
}

// N consecutive floats of X (N a multiple of 8; 16-byte aligned on the GPU: 16-byte loads).
template <u32 N>
FZ_HD void load_run(const float* p, float* v) {
#if defined(__CUDA_ARCH__)
FZ_UNROLL
  for (u32 i = 0; i < N / 4; ++i) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p) + i);
    v[4 * i] = a.x, v[4 * i + 1] = a.y, v[4 * i + 2] = a.z, v[4 * i + 3] = a.w;
  }
#else
  for (u32 i = 0; i < N; ++i) v[i] = p[i];
#endif
}

FZ_HD float load1(const float* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// Rows of X: a compile-time count on the GPU (NB = 1..8); NB = 0 reads the count at run time (the twin,
// which thereby needs one instantiation, not eight: the per-row arithmetic is the same either way).
template <int NB>
struct Rows {
  static constexpr u32 cap = NB ? u32(NB) : GEMV_MAX_BATCH;
  u32 n_rt;
  FZ_HD u32 n() const { return NB ? u32(NB) : n_rt; }
};

// Step 2 of the order, over 32 values in memory (the twin; the GPU's shuffles do the same additions).
FZ_HD float lane_tree(float* v) {
  for (u32 s = 16; s >= 1; s >>= 1) {
    for (u32 c = 0; c < s; ++c) v[c] = fz_add(v[c], v[c + s]);
  }
  return v[0];
}

// Step 3: y of one row of W for row b of X, from its segments [first, end). `lanes` is 1 when a segment's
// lane partials were already added (the aligned path, in the kernel), 32 when they are stored per lane.
FZ_HD float gemv_row(const float* partials, u32 lanes, u64 first, u64 end, u32 nb, u32 b) {
  float y = 0.0f;
  for (u64 s = first; s < end; ++s) {
    float v;
    if (lanes == 1) {
      v = partials[s * nb + b];
    } else {
      float t[32];
      for (u32 c = 0; c < 32; ++c) t[c] = partials[(s * 32 + c) * nb + b];
      v = lane_tree(t);
    }
    y = s == first ? v : fz_add(y, v);
  }
  return y;
}

// The aligned paths: every step of the warp lies in one row of W (in % 256 == 0), all lanes change rows at
// the same step, and a lane's 8 weights of a step meet 8 consecutive floats of each row of X at column
// col0 + 8c. At a row's end (or the lane's) the lane partials are added across the warp and lane 0 stores
// the segment's sum. Warp-uniform: every lane of a tile decodes the same full steps, and there is no tail.
// BLOCK (in % 1024 == 0): rows end only between blocks of 4 steps (tiles start at multiples of 2048, so the
// last tile's full steps are a multiple of 4 too), and the row test runs once a block instead of every step.
template <int NB, bool F16, bool BLOCK>
struct DotAligned {
  const float* x;   // X at the lane's first column (8 * lane)
  Rows<NB> rows;
  u32 in;
  u32 col0;         // column of lane 0's group at the next step (BLOCK: at the block's first step)
  u64 seg;          // the segment being accumulated
  float* partials;  // GPU: [segments][nb]; twin: this tile's lane partials [segments of the tile][32][nb]
  u64 seg_first;    // the twin's first segment of the tile
  u32 lane;
  bool open;        // some step accumulated into `acc` since the last emit
  u64 tail_at;      // unused: no tail
  float acc[Rows<NB>::cap];

  FZ_HD void init(const float* x_, u32 nb, u32 in_, u64 flat, u64 seg0, float* parts, u32 lane_) {
    rows.n_rt = nb;
    x = x_ + 8 * lane_ * rows.n();
    in = in_;
    col0 = u32(flat % in_);
    seg = seg_first = seg0;
    partials = parts;
    lane = lane_;
    open = false;
    for (u32 b = 0; b < Rows<NB>::cap; ++b) acc[b] = 0.0f;
  }

  FZ_HD void emit() {
    for (u32 b = 0; b < rows.n(); ++b) {
#if defined(__CUDA_ARCH__)
      float v = acc[b];
      for (int s = 16; s >= 1; s >>= 1) v = fz_add(v, __shfl_xor_sync(0xFFFFFFFFu, v, s));
      if (lane == 0) partials[seg * rows.n() + b] = v;
#else
      partials[((seg - seg_first) * 32 + lane) * rows.n() + b] = acc[b];
#endif
      acc[b] = 0.0f;
    }
    seg += 1;
    open = false;
  }

  FZ_HD void step(u64 j, const u32* w) {
    const u32 col = BLOCK ? col0 + u32(j & 3) * GEMV_STEP : col0;
    constexpr u32 cap = Rows<NB>::cap;
    const u32 n = rows.n();
    float xv[8 * cap];
    if constexpr (NB != 0) {
      load_run<8 * cap>(x + u64(col) * cap, xv);
    } else {
      for (u32 i = 0; i < 8 * n; ++i) xv[i] = x[u64(col) * n + i];
    }
FZ_UNROLL
    for (int i = 0; i < 4; ++i) {
      const float lo = widen_lo<F16>(w[i]), hi = widen_hi<F16>(w[i]);
      for (u32 b = 0; b < n; ++b) acc[b] = fz_fma(lo, xv[2 * i * n + b], acc[b]);
      for (u32 b = 0; b < n; ++b) acc[b] = fz_fma(hi, xv[(2 * i + 1) * n + b], acc[b]);
    }
    open = true;
    if constexpr (!BLOCK) advance(GEMV_STEP);
  }
  FZ_HD void advance(u32 n) {
    col0 += n;
    if (col0 == in) {
      emit();
      col0 = 0;
    }
  }
  FZ_HD void block_end() {
    if constexpr (BLOCK) advance(4 * GEMV_STEP);
  }
  FZ_HD void tail(u32, u32) {}  // none: numel is a multiple of 256 (checked on the host)
  FZ_HD void finish() {
    if (open) emit();  // the row goes on in the next tile
  }
};

// Any shape: the lane follows its own (row, column), stores its lane partial of each segment it touches
// (to [segments][32][nb], zeroed beforehand: a lane that misses a row contributes +0), and a second pass
// (gemv_row with lanes = 32) adds them. Per element, so slower: for shapes the aligned path does not take.
template <int NB, bool F16>
struct DotAny {
  const float* x;
  Rows<NB> rows;
  u32 in;
  u64 flat;        // the lane's first element's index in W (flat) = tile start + 8 * lane
  u64 row, row_lo, seg0;
  u32 col;
  float* partials;  // [segments][32][nb]
  u32 lane;
  bool open;
  float acc[Rows<NB>::cap];

  FZ_HD void init(const float* x_, u32 nb, u32 in_, u64 tile_flat, u64 seg0_, float* parts, u32 lane_) {
    x = x_;
    rows.n_rt = nb;
    in = in_;
    flat = tile_flat + 8 * lane_;
    row_lo = tile_flat / in_;
    row = row_lo;
    col = 0;
    seg0 = seg0_;
    partials = parts;
    lane = lane_;
    open = false;
    for (u32 b = 0; b < Rows<NB>::cap; ++b) acc[b] = 0.0f;
  }
  FZ_HD void flush() {
    if (!open) return;
    float* p = partials + ((seg0 + (row - row_lo)) * 32 + lane) * rows.n();
    for (u32 b = 0; b < rows.n(); ++b) {
      p[b] = acc[b];
      acc[b] = 0.0f;
    }
    open = false;
  }
  FZ_HD void seek(u64 f) {
    const u64 r = f / in;
    if (r != row) {
      flush();
      row = r;
    }
    col = u32(f - r * in);
  }
  FZ_HD void elem(u32 h) {
    const float wv = widen<F16>(h);
    const float* xc = x + u64(col) * rows.n();
    for (u32 b = 0; b < rows.n(); ++b) acc[b] = fz_fma(wv, load1(xc + b), acc[b]);
    open = true;
    if (++col == in) {
      flush();
      col = 0;
      row += 1;
    }
  }
  FZ_HD void block_end() {}
  FZ_HD void step(u64 j, const u32* w) {
    seek(flat + j * GEMV_STEP);
    for (int i = 0; i < 4; ++i) {
      elem(w[i] & 0xFFFFu);
      elem(w[i] >> 16);
    }
  }
  u64 tail_at;  // set by the caller: the lane's first tail element (flat)
  FZ_HD void tail(u32 k, u32 v) {
    if (k == 0) seek(tail_at);
    elem(v);
  }
  FZ_HD void finish() { flush(); }
};

// One lane of a GEMV tile: decode with the blob's raw width R and feed the sink. `tile_flat` is the tile's
// first element in W, `seg0` its first segment. Returns whether the lane ended exactly at its end bit.
template <u32 R, bool LONG, class Sink>
FZ_HD bool gemv_lane(const LaneJob& job, const Code& code, Sink& sink, u64 tile_flat, u64 full_steps) {
  sink.tail_at = tile_flat + full_steps * GEMV_STEP + 8 * sink.lane;
  const bool ok = (job.full_steps == 0 && job.tail_count == 0) ? job.start == job.end
                                                               : lane16_run<R, LONG>(job, code, sink);
  sink.finish();
  return ok;
}

}  // namespace fz
