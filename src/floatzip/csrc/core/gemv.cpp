// The host twin of the fused decode-GEMV (fz_gemv.cu): the kernel's per-lane code (fz_gemv.h's sinks over
// fz_lane.h's lane16_run) run lane after lane, the warp's butterfly replaced by lane_tree over the lanes'
// stored partials (the same additions in the same order), then gemv_finish's per-row sums.
#include "core/gemv.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "core/pool.h"
#include "fz_gemv.h"

namespace fz {

namespace {

// Segments of a tile covering flat elements [lo, hi) of a matrix with `in` columns.
u64 tile_segments(u64 lo, u64 hi, u64 in) { return (hi - 1) / in - lo / in + 1; }

template <u32 R, bool LONG, bool F16, int PATH>
void run(const BatchArrays& a, const BatchSizes& n, const GemvArrays& g, const GemvSizes& s, int threads) {
  parallel_for(n.jobs, threads, [&](size_t j) {
    const JobDesc job = a.jobs[j];
    Code code;
    code.primary = a.primaries + (u64(job.code) << PRIMARY_BITS);
    code.longc = a.longcs + job.code;
    code.long_pattern = a.long_patterns + a.long_at[job.code];
    std::vector<float> lane_parts;
    for (u32 w = 0; w < job.n_tiles; ++w) {
      const u32 tile = job.first_tile + w;
      const TileDesc d = a.tiles[tile];
      const u64 flat = d.out_byte / 2, elems = u64(d.full_steps) * GEMV_STEP + d.tail;
      const u64 segs = tile_segments(flat, flat + elems, s.in);
      if (PATH != 0) lane_parts.assign(segs * 32 * s.nb, 0.0f);
      bool ok = true;
      u32 before = 0;
      for (u32 lane = 0; lane < 32; ++lane) {
        const u32 delta = lane_delta(d, a.deltas, lane);
        const LaneJob lj = tile_lane_job(d, a.codes, a.last_code_word, a.raw, lane, delta, before, 8);
        if constexpr (PATH != 0) {
          DotAligned<0, F16, PATH == 2> sink;
          sink.init(g.x, s.nb, u32(s.in), flat, g.seg_base[tile], lane_parts.data(), lane);
          ok &= gemv_lane<R, LONG>(lj, code, sink, flat, d.full_steps);
        } else {
          DotAny<0, F16> sink;
          sink.init(g.x, s.nb, u32(s.in), flat, g.seg_base[tile], g.partials, lane);
          ok &= gemv_lane<R, LONG>(lj, code, sink, flat, d.full_steps);
        }
        before += delta;
      }
      if constexpr (PATH != 0) {  // the warp's butterfly, as lane_tree
        float v[32];
        for (u64 k = 0; k < segs; ++k) {
          for (u32 b = 0; b < s.nb; ++b) {
            for (u32 c = 0; c < 32; ++c) v[c] = lane_parts[(k * 32 + c) * s.nb + b];
            g.partials[(g.seg_base[tile] + k) * s.nb + b] = lane_tree(v);
          }
        }
      }
      a.errors[tile] = ok ? 0u : 1u;
    }
  });
  const u32 lanes = PATH != 0 ? 1 : 32;
  for (u64 r = 0; r < s.rows; ++r) {
    for (u32 b = 0; b < s.nb; ++b) g.y[b * s.rows + r] = gemv_row(g.partials, lanes, g.row_seg[r], g.row_seg[r + 1], s.nb, b);
  }
}

template <bool LONG, bool F16, int PATH>
void run_r(const BatchArrays& a, const BatchSizes& n, const GemvArrays& g, const GemvSizes& s, u32 r, int threads) {
  switch (r) {
    case 4: return run<4, LONG, F16, PATH>(a, n, g, s, threads);
    case 5: return run<5, LONG, F16, PATH>(a, n, g, s, threads);
    case 6: return run<6, LONG, F16, PATH>(a, n, g, s, threads);
    case 7: return run<7, LONG, F16, PATH>(a, n, g, s, threads);
    case 8: return run<8, LONG, F16, PATH>(a, n, g, s, threads);
    case 9: return run<9, LONG, F16, PATH>(a, n, g, s, threads);
    case 10: return run<10, LONG, F16, PATH>(a, n, g, s, threads);
    case 11: return run<11, LONG, F16, PATH>(a, n, g, s, threads);
    default: throw std::invalid_argument("no GEMV kernel for this raw width");
  }
}

template <bool F16, int PATH>
void run_l(const BatchArrays& a, const BatchSizes& n, const GemvArrays& g, const GemvSizes& s, u32 r, bool long_codes,
           int threads) {
  if (long_codes) run_r<true, F16, PATH>(a, n, g, s, r, threads);
  else run_r<false, F16, PATH>(a, n, g, s, r, threads);
}

}  // namespace

void validate_gemv(const BatchArrays& a, const BatchSizes& n, const GemvArrays& g, const GemvSizes& s) {
  auto bad = [](const char* what) { throw std::invalid_argument(std::string("bad GEMV batch: ") + what); };
  validate_batch(a, n, 16);
  if (s.nb < 1 || s.nb > GEMV_MAX_BATCH) bad("X must have 1 to 8 rows");
  if (s.in < 1 || s.in >= (u64(1) << 31) || s.rows < 1) bad("W's shape is out of range");
  if (s.path < 0 || s.path > 2 || (s.path == 1 && s.in % 256) || (s.path == 2 && s.in % 1024))
    bad("the path does not fit W's row length");
  if (s.x < s.in * s.nb) bad("X is too small");
  if (s.y < s.rows * s.nb) bad("Y is too small");
  if (s.seg_base != n.tiles || s.row_seg != s.rows + 1) bad("segment tables have the wrong length");
  // the tiles must cover W's rows * in elements in order, each tile's segments where seg_base says
  u64 flat = 0, seg = 0;
  for (size_t t = 0; t < n.tiles; ++t) {
    const TileDesc& d = a.tiles[t];
    const u64 elems = u64(d.full_steps) * GEMV_STEP + d.tail;
    if (d.out_byte != 2 * flat || elems == 0) bad("the tiles are not W's elements in order");
    if (s.path != 0 && d.tail) bad("a tile of the aligned path has a tail");
    if (g.seg_base[t] != seg) bad("a tile's first segment is wrong");
    seg += tile_segments(flat, flat + elems, s.in);
    flat += elems;
  }
  if (flat != s.rows * s.in) bad("the tiles do not cover W");
  if (s.partials < seg * s.nb * (s.path ? 1 : 32)) bad("the partials are too small");
  // row r's segments: one per tile that holds part of it; segments run in (tile, row) order, which is also
  // (row, tile) order, so a row's are consecutive and row_seg is the running count
  std::vector<u64> count(s.rows, 0);
  for (size_t t = 0; t < n.tiles; ++t) {
    const TileDesc& d = a.tiles[t];
    const u64 lo = d.out_byte / 2, hi = lo + u64(d.full_steps) * GEMV_STEP + d.tail;
    for (u64 r = lo / s.in; r <= (hi - 1) / s.in; ++r) count[r] += 1;
  }
  u64 at = 0;
  for (u64 r = 0; r < s.rows; ++r) {
    if (g.row_seg[r] != at) bad("a row's first segment is wrong");
    at += count[r];
  }
  if (g.row_seg[s.rows] != at || at != seg) bad("the rows' segments do not match the tiles'");
}

void gemv_host(const BatchArrays& a, const BatchSizes& n, const GemvArrays& g, const GemvSizes& s, uint32_t r,
               bool long_codes, bool f16, int threads) {
  validate_gemv(a, n, g, s);
  if (s.path == 0) {
    for (size_t i = 0; i < s.partials; ++i) g.partials[i] = 0.0f;
  }
  switch ((f16 ? 3 : 0) + s.path) {
    case 0: return run_l<false, 0>(a, n, g, s, r, long_codes, threads);
    case 1: return run_l<false, 1>(a, n, g, s, r, long_codes, threads);
    case 2: return run_l<false, 2>(a, n, g, s, r, long_codes, threads);
    case 3: return run_l<true, 0>(a, n, g, s, r, long_codes, threads);
    case 4: return run_l<true, 1>(a, n, g, s, r, long_codes, threads);
    default: return run_l<true, 2>(a, n, g, s, r, long_codes, threads);
  }
}

}  // namespace fz
