// The host emulation of a GPU decode batch: the arrays floatzip.decode.cuda uploads, decoded on the CPU by
// fz_batch.h's per-tile setup and fz_lane.h's per-lane body, the warp's scan and vote done by a loop.
#include "core/batch.h"

#include <stdexcept>
#include <string>

#include "core/pool.h"
#include "fz_batch.h"

namespace fz {

namespace {

template <int BITS, u32 R, bool LONG>
void run(const BatchArrays& a, size_t n_jobs, int threads) {
  parallel_for(n_jobs, threads, [&](size_t j) {
    const JobDesc job = a.jobs[j];
    Code code;
    code.primary = a.primaries + (u64(job.code) << PRIMARY_BITS);
    code.longc = a.longcs + job.code;
    code.long_pattern = a.long_patterns + a.long_at[job.code];
    const u16* plane_tables = reinterpret_cast<const u16*>(a.primaries + (u64(job.planes_at) << PRIMARY_BITS));
    code.planes[0] = plane_tables;
    code.planes[1] = plane_tables + (1u << PRIMARY_BITS);
    for (u32 w = 0; w < job.n_tiles; ++w) {
      const u32 tile = job.first_tile + w;
      const TileDesc d = a.tiles[tile];
      bool ok = true;
      u32 before = 0;
      for (u32 lane = 0; lane < 32; ++lane) {
        const u32 delta = lane_delta(d, a.deltas, lane);
        const LaneJob lj = tile_lane_job<(BITS == 32 ? R : 0)>(d, a.codes, a.last_code_word, a.raw, lane, delta, before, 16 / (BITS / 8));
        ok &= batch_lane<BITS, R, LONG>(lj, code, a.out, d, lane);
        before += delta;
      }
      a.errors[tile] = ok ? 0u : 1u;
    }
  });
}

template <int BITS, bool LONG>
void run_r(const BatchArrays& a, size_t n_jobs, u32 r, int threads) {
  if constexpr (BITS == 16) {
    switch (r) {
      case 4: return run<16, 4, LONG>(a, n_jobs, threads);
      case 5: return run<16, 5, LONG>(a, n_jobs, threads);
      case 6: return run<16, 6, LONG>(a, n_jobs, threads);
      case 7: return run<16, 7, LONG>(a, n_jobs, threads);
      case 8: return run<16, 8, LONG>(a, n_jobs, threads);
      case 9: return run<16, 9, LONG>(a, n_jobs, threads);
      case 10: return run<16, 10, LONG>(a, n_jobs, threads);
      case 11: return run<16, 11, LONG>(a, n_jobs, threads);
      case 0: return run<16, 0, LONG>(a, n_jobs, threads);
      default: throw std::invalid_argument("no 16-bit kernel for this raw width");
    }
  } else if constexpr (BITS == 32) {  // r: the coded low planes
    switch (r) {
      case 0: return run<32, 0, LONG>(a, n_jobs, threads);
      case 1: return run<32, 1, LONG>(a, n_jobs, threads);
      case 2: return run<32, 2, LONG>(a, n_jobs, threads);
      default: throw std::invalid_argument("no 32-bit kernel for this many low planes");
    }
  } else {
    if (r != 0) throw std::invalid_argument("the 8-bit kernel takes any raw width (r = 0)");
    run<BITS, 0, LONG>(a, n_jobs, threads);
  }
}

}  // namespace

void validate_batch(const BatchArrays& a, const BatchSizes& n, int bits, uint32_t planes) {
  auto bad = [](const char* what) { throw std::invalid_argument(std::string("bad decode batch: ") + what); };
  const u32 item = u32(bits / 8), group = 16 / item;
  if (planes > u32(MAX_PLANES) || (planes && bits != 32)) bad("low planes are coded for F32 only, at most 2");
  for (size_t j = 0; j < n.jobs; ++j) {
    const JobDesc& job = a.jobs[j];
    if (job.n_tiles < 1 || job.n_tiles > u32(WARPS) || job.first_tile > n.tiles || job.n_tiles > n.tiles - job.first_tile)
      bad("a job's tiles are out of range");
    if (job.code >= n.codes_tables) bad("a job names a code that does not exist");
    if (a.long_at[job.code] > n.long_patterns) bad("a code's long patterns are out of range");
    // the plane tables: planes x 4096 16-bit entries from slot planes_at (both are read by the host twin)
    if (planes && job.planes_at >= n.primary_slots) bad("a job's plane tables are out of range");
  }
  if (a.last_code_word + 1 != n.codes) bad("the last code word is not the stream's last");
  for (size_t j = 0; j < n.jobs; ++j) {
    for (u32 w = 0; w < a.jobs[j].n_tiles; ++w) {
      const TileDesc& d = a.tiles[a.jobs[j].first_tile + w];
      const u32 width = d.lanes >> 27;
      if (width > 24) bad("a tile's delta width is too large");
      if (d.delta_word + width > n.deltas) bad("a tile's lane deltas are out of range");
      if (tile_shift(d) > 23 || d.tail >= 32 * group) bad("a tile's shape is out of range");
      if (tile_planes(d) != planes || tile_shift(d) < 8 * planes) bad("a tile's low planes do not match the kernel");
      u64 sum = 0;
      for (u32 lane = 0; lane < 32; ++lane) sum += (d.lanes & ((1u << 27) - 1)) + lane_delta(d, a.deltas, lane);
      const u64 symbols = u64(d.full_steps) * group + group;  // the most a lane holds
      if ((d.code_bit + sum) / 32 + (max_element_bits(planes) * symbols + 31) / 32 + 4 > n.codes)
        bad("a tile's code bits are out of range");
      const u32 r = tile_raw_bits(d);
      const u64 raw_words = 32 * ((u64(d.full_steps) * group * r + 31) / 32) + (u64(d.tail) * r + 31) / 32;
      if (d.raw_word + raw_words + RAW_PAD_WORDS > n.raw) bad("a tile's raw words are out of range");
      const u64 bytes = (u64(d.full_steps) * 32 * group + d.tail) * item;
      if (d.out_byte % 16 || d.out_byte + bytes > n.out_bytes) bad("a tile's output is out of range or misaligned");
    }
  }
}

void decode_batch_host(const BatchArrays& a, size_t n_jobs, int bits, uint32_t r, bool long_codes, int threads) {
  switch (bits) {
    case 8: return long_codes ? run_r<8, true>(a, n_jobs, r, threads) : run_r<8, false>(a, n_jobs, r, threads);
    case 16: return long_codes ? run_r<16, true>(a, n_jobs, r, threads) : run_r<16, false>(a, n_jobs, r, threads);
    case 32: return long_codes ? run_r<32, true>(a, n_jobs, r, threads) : run_r<32, false>(a, n_jobs, r, threads);
    default: throw std::invalid_argument("bits must be 8, 16 or 32");
  }
}

}  // namespace fz
