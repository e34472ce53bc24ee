#include "core/decode.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/crc32c.h"
#include "core/decode_avx512.h"
#include "core/pool.h"

namespace fz {

namespace {

struct View {
  const u32* codes;
  const u32* raw;
  u64 last_code_word;  // the highest index a lane may read (the stream's padding included)
};

View view_of(const uint8_t* blob, const BlobInfo& b) {
  View v;
  v.codes = reinterpret_cast<const u32*>(blob + b.codes_at);
  v.raw = reinterpret_cast<const u32*>(blob + b.raw_at);
  v.last_code_word = b.code_words + CODE_PAD_WORDS - 1;
  return v;
}

template <bool LONG>
bool lane16_r(const LaneJob& job, const Code& code, u32 r, u16* out, u64 stride, u16* tail) {
  switch (r) {
    case 4: return lane16_fast<4, LONG>(job, code, out, stride, tail);
    case 5: return lane16_fast<5, LONG>(job, code, out, stride, tail);
    case 6: return lane16_fast<6, LONG>(job, code, out, stride, tail);
    case 7: return lane16_fast<7, LONG>(job, code, out, stride, tail);
    case 8: return lane16_fast<8, LONG>(job, code, out, stride, tail);
    case 9: return lane16_fast<9, LONG>(job, code, out, stride, tail);
    case 10: return lane16_fast<10, LONG>(job, code, out, stride, tail);
    case 11: return lane16_fast<11, LONG>(job, code, out, stride, tail);
    default: return decode_lane16<LONG>(job, code, out, stride, tail);  // no 16-bit split has other widths
  }
}

// The fast 16-bit lane for the blob's raw width: the kernel's own per-lane code.
template <typename W>
bool lane16(const LaneJob& job, const Code& code, bool long_codes, u32 r, W* out, u64 stride, W* tail) {
  u16* o = reinterpret_cast<u16*>(out);
  u16* t = reinterpret_cast<u16*>(tail);
  return long_codes ? lane16_r<true>(job, code, r, o, stride, t) : lane16_r<false>(job, code, r, o, stride, t);
}

// FLOATZIP_CPU_PATH picks the 16-bit tile decoder: "lane" (the GPU kernel's per-lane code, lane after lane),
// "portable" (four lanes at a time, words assembled in plain C++), or anything else / unset: the same with
// the words assembled with AVX-512 where the CPU has it. The tests run all three.
int cpu_path() {
  static const int path = [] {
    const char* env = std::getenv("FLOATZIP_CPU_PATH");
    if (env && std::strcmp(env, "lane") == 0) return 0;
    if (env && std::strcmp(env, "portable") == 0) return 1;
    return 2;
  }();
  return path;
}

// The host twin of the kernel's per-tile work: the lanes' start bits from the tile index (the kernel
// computes them with a warp scan), then fz_lane.h's per-lane body for each lane in turn.
// A blob's decode tables: each code table's, and (version 3) its planes' in lane order.
struct BlobTables {
  std::vector<Tables> codes;
  std::vector<std::vector<uint16_t>> planes;  // n_tables * planes
  Code code(uint32_t table, uint32_t n_planes) const {
    const Tables& tb = codes[table];
    Code c{tb.primary.data(), &tb.longc, tb.long_pattern.data(), {nullptr, nullptr}};
    for (uint32_t q = 0; q < n_planes; ++q) c.planes[q] = planes[size_t(table) * n_planes + q].data();
    return c;
  }
};

// F32 with coded planes: the tile's lanes LANES_AT_ONCE at a time, their steps interleaved (one lane's chain of
// dependent lookups is 3 per element; four independent ones keep a core busy), each lane fz_lane.h's PlaneLane.
constexpr int LANES_AT_ONCE = 4;

template <u32 P, bool LONG>
bool plane_lanes(const LaneJob* jobs, const Code& code, u32* out, u64 stride, u32* tail_out, u32 group) {
  bool ok = true;
  for (int c0 = 0; c0 < LANES; c0 += LANES_AT_ONCE) {
    PlaneLane<P, LONG> lane[LANES_AT_ONCE];
    for (int i = 0; i < LANES_AT_ONCE; ++i) lane[i].init(jobs[c0 + i]);
    const u64 steps = jobs[c0].full_steps;  // every lane of a tile decodes its full steps
    for (u64 j = 0; j < steps; ++j)
      for (int i = 0; i < LANES_AT_ONCE; ++i) lane[i].step(jobs[c0 + i], code, out + u64(c0 + i) * group + j * stride);
    for (int i = 0; i < LANES_AT_ONCE; ++i) ok &= lane[i].finish(jobs[c0 + i], code, tail_out + u64(c0 + i) * group);
  }
  return ok;
}

template <typename W>
bool decode_tile(const uint8_t* blob, const BlobInfo& b, const View& v, const BlobTables& tables,
                 const std::vector<uint64_t>& delta_at, uint32_t t, W* out) {
  const uint8_t* table_ids = b.n_tables > 1 ? blob + b.tile_table_at : nullptr;
  const Code code = tables.code(table_ids ? table_ids[t] : 0, b.planes);
  const u32 group = b.group;
  const u64 m = b.tile_elements(t);
  const u64 full = m / (u64(LANES) * group), tail = m - full * LANES * group;
  const u32* raw = v.raw + b.tile_raw_offset(t);
  const u64 lane_words = (full * group * b.raw_bits + 31) / 32;
  u64 start[LANES], end[LANES];
  lane_starts(blob, b, t, delta_at[t], start, end);
  const bool long_codes = b.max_code_len > PRIMARY_BITS;
  bool ok = true;
  LaneJob plane_jobs[LANES];                 // F32 with planes: every lane's job, decoded together below
  std::vector<u32> plane_scratch[LANES];     // their padded copies, kept until then
  for (int c = 0; c < LANES; ++c) {
    int64_t extra = int64_t(tail) - int64_t(group) * c;
    LaneJob job;
    job.codes = v.codes;
    job.last_code_word = v.last_code_word;
    job.raw = raw + c;
    job.raw_stride = LANES;
    job.tail_raw = raw + LANES * lane_words;
    job.full_steps = full;
    job.tail_count = extra <= 0 ? 0 : (extra > int64_t(group) ? group : u32(extra));
    job.tail_first = u64(c) * group;
    job.shift = b.shift;
    job.start = start[c];
    job.end = end[c];
    W* lane_out = out + u64(c) * group;
    W* tail_out = out + full * LANES * group + u64(c) * group;
    const u64 stride = u64(LANES) * group;
    if (job.full_steps == 0 && job.tail_count == 0 && !(sizeof(W) == 4 && b.planes)) {
      ok &= job.start == job.end;
      continue;
    }
    // the lane may read max_element_bits per element past its start (a corrupt stream), plus lookahead: a
    // lane near the stream's end reads a padded copy of what is left instead (the GPU batch pads its stream)
    std::vector<u32>& scratch = plane_scratch[c];
    const u64 n = full * group + job.tail_count;
    const u64 first_word = job.start >> 5;
    const u64 need = first_word + ((max_element_bits(b.planes) * n + 31) >> 5) + 4;
    const u64 avail = b.code_words + CODE_PAD_WORDS;
    if (need > avail) {
      scratch.assign(need - first_word, 0);
      std::memcpy(scratch.data(), v.codes + first_word, 4 * (avail - first_word));
      job.codes = scratch.data();
      job.start -= 32 * first_word;
      job.end -= 32 * first_word;
    }
    if constexpr (sizeof(W) == 2) {
      ok &= lane16(job, code, long_codes, b.raw_bits, lane_out, stride, tail_out);
    } else if (sizeof(W) == 4 && b.planes) {
      plane_jobs[c] = job;  // decoded with the tile's other lanes, below
    } else {
      ok &= long_codes ? decode_lane_any<W, true>(job, code, group, lane_out, stride, tail_out)
                       : decode_lane_any<W, false>(job, code, group, lane_out, stride, tail_out);
    }
  }
  if (sizeof(W) == 4 && b.planes) {
    u32* o = reinterpret_cast<u32*>(out);
    u32* to = o + full * LANES * group;
    const u64 stride = u64(LANES) * group;
    if (b.planes == 1)
      ok &= long_codes ? plane_lanes<1, true>(plane_jobs, code, o, stride, to, group)
                       : plane_lanes<1, false>(plane_jobs, code, o, stride, to, group);
    else
      ok &= long_codes ? plane_lanes<2, true>(plane_jobs, code, o, stride, to, group)
                       : plane_lanes<2, false>(plane_jobs, code, o, stride, to, group);
  }
  return ok;
}

// The vector path's view of tile t, when it applies: a full 16-bit tile whose lanes lie clear of the
// stream's end (so that no read needs a padded copy), with a raw width the vector code is built for.
struct FastTile {
  Tile16 t;
  u64 start[LANES], end[LANES];
  std::vector<u32> padded;  // the tile's codes with padding, when the stream's own padding is too short
  bool ok;
};

void fast_tile(const uint8_t* blob, const BlobInfo& b, const View& v, const BlobTables& tables,
               const std::vector<uint64_t>& delta_at, uint32_t t, u16* out, FastTile& f) {
  f.ok = false;
  if (b.layout->itemsize() != 2 || b.raw_bits < 4 || b.raw_bits > 11 || cpu_path() == 0 || !fast_path_available()) return;
  // a tile of full steps only (the last tile too, when it has no tail), in blocks of four
  const u64 m = b.tile_elements(t), steps = m / (u64(LANES) * b.group);
  if (m != steps * LANES * b.group || steps % 4) return;
  lane_starts(blob, b, t, delta_at[t], f.start, f.end);
  // a lane may read 16 bits per symbol past its start: a tile near the stream's end reads a padded copy
  const u64 reach = (f.start[LANES - 1] >> 5) + ((16 * steps * b.group + 31) >> 5) + 4;
  const u64 avail = b.code_words + CODE_PAD_WORDS;
  const u32* codes = v.codes;
  if (reach > avail) {
    const u64 first = f.start[0] >> 5;
    f.padded.assign(reach - first, 0);
    std::memcpy(f.padded.data(), v.codes + first, 4 * (avail - first));
    for (int c = 0; c < LANES; ++c) {
      f.start[c] -= 32 * first;
      f.end[c] -= 32 * first;
    }
    codes = f.padded.data();
  }
  f.t = Tile16{codes, f.start, f.end, v.raw + b.tile_raw_offset(t), steps, nullptr, out, cpu_path() == 2};
  f.ok = true;
  (void)tables;
}

template <typename F>
void by_width(int itemsize, F&& f) {
  if (itemsize == 1)
    f(u8(0));
  else if (itemsize == 2)
    f(u16(0));
  else
    f(u32(0));
}

BlobTables tables_of(const BlobInfo& b) {
  BlobTables out;
  const size_t nsym = size_t(1) << b.sym_bits;
  for (u32 t = 0; t < b.n_tables; ++t)
    out.codes.push_back(build_tables(&b.lengths[t * nsym], nsym, b.shift, b.layout->bits));
  for (size_t j = 0; j < size_t(b.n_tables) * b.planes; ++j)
    out.planes.push_back(build_plane_table(&b.plane_lengths[j * PLANE_SYMBOLS]));
  return out;
}

// Decodes tiles [first, first + count) into out. With `crcs`, work item i (tiles first + 2i and the next)
// also leaves the CRC-32C of its output there, taken while the bytes are still in the core's cache.
void run_tiles(const uint8_t* blob, const BlobInfo& b, uint32_t first, uint32_t count, void* out, int threads,
               uint32_t* crcs = nullptr) {
  if (count == 0) return;
  const View v = view_of(blob, b);
  const BlobTables tables = tables_of(b);
  const std::vector<uint64_t> delta_at = delta_offsets(blob, b);
  std::atomic<int64_t> bad_tile{-1};
  by_width(b.layout->itemsize(), [&](auto z) {
    using W = decltype(z);
    W* o = static_cast<W*>(out);
    auto item_crc = [&](size_t item, uint32_t t0, uint32_t n) {
      if (crcs == nullptr) return;
      const uint64_t elems = b.tile_elements(t0) + (n > 1 ? b.tile_elements(t0 + 1) : 0);
      crcs[item] = crc32c(0, reinterpret_cast<const uint8_t*>(o + u64(t0 - first) * b.tile_elems), elems * sizeof(W));
    };
    auto fail = [&](uint32_t t) {
      int64_t expected = -1;
      bad_tile.compare_exchange_strong(expected, int64_t(t));
    };
    // two tiles per work item: the vector path decodes a pair together (four independent groups of lanes)
    parallel_for((count + 1) / 2, threads, [&](size_t item) {
      const uint32_t t0 = first + uint32_t(2 * item);
      const uint32_t n = std::min<uint32_t>(2, first + count - t0);
      FastTile f[2];
      const uint8_t* table_ids = b.n_tables > 1 ? blob + b.tile_table_at : nullptr;
      bool fast = true;
      for (uint32_t k = 0; k < n; ++k) {
        fast_tile(blob, b, v, tables, delta_at, t0 + k, reinterpret_cast<u16*>(o + u64(t0 + k - first) * b.tile_elems), f[k]);
        fast &= f[k].ok;
      }
      if (fast) {
        // each tile with its own table (tiles of a pair may name different ones, FORMAT.md §1.2)
        Code code[2];
        Tile16 t16[2];
        for (uint32_t k = 0; k < n; ++k) {
          code[k] = tables.code(table_ids ? table_ids[t0 + k] : 0, 0);
          t16[k] = f[k].t;
          t16[k].start = f[k].start;
          t16[k].end = f[k].end;
          t16[k].code = &code[k];
        }
        bool ok = true;
        for (uint32_t k = 0; k < n; ++k) ok &= decode_tile16_fast(t16[k], b.max_code_len > PRIMARY_BITS, b.raw_bits);
        if (ok) return item_crc(item, t0, n);
        // a pair that does not decode: each tile again on its own, to name the bad one
      }
      bool ok = true;
      for (uint32_t k = 0; k < n; ++k) {
        if (!decode_tile(blob, b, v, tables, delta_at, t0 + k, o + u64(t0 + k - first) * b.tile_elems)) {
          fail(t0 + k);
          ok = false;
        }
      }
      if (ok) item_crc(item, t0, n);
    });
  });
  if (bad_tile.load() >= 0)
    throw IntegrityError("tile " + std::to_string(bad_tile.load()) + " of the code stream does not decode (corrupt data)");
}

}  // namespace

std::vector<uint64_t> delta_offsets(const uint8_t* blob, const BlobInfo& b) {
  std::vector<uint64_t> at(b.n_tiles);
  uint64_t w = 0;
  for (uint32_t t = 0; t < b.n_tiles; ++t) {
    at[t] = w;
    w += rd32(blob + b.tile_lanes_at + 4 * size_t(t)) >> BASE_BITS;
  }
  return at;
}

void lane_starts(const uint8_t* blob, const BlobInfo& b, uint32_t t, uint64_t dword, uint64_t* start,
                 uint64_t* end) {
  const uint32_t lanes_word = rd32(blob + b.tile_lanes_at + 4 * size_t(t));
  const uint32_t base = lanes_word & ((1u << BASE_BITS) - 1), width = lanes_word >> BASE_BITS;
  const uint8_t* dw = blob + b.deltas_at + 4 * dword;
  uint64_t p = uint64_t(rd32(blob + b.tile_words_at + 4 * size_t(t))) * 32;
  uint64_t dpos = 0;
  for (int c = 0; c < LANES; ++c) {
    uint32_t d = 0;
    if (width) {
      uint64_t q = dpos >> 5, o = dpos & 31;
      uint64_t pair = uint64_t(rd32(dw + 4 * q)) | (o + width > 32 ? uint64_t(rd32(dw + 4 * q + 4)) << 32 : 0);
      d = uint32_t((pair >> o) & ((uint64_t(1) << width) - 1));
      dpos += width;
    }
    start[c] = p;
    p += uint64_t(base) + d;
    end[c] = p;
  }
}

void decode_v2(const uint8_t* blob, const BlobInfo& b, void* out, int threads, bool check_crc) {
  if (!check_crc) return run_tiles(blob, b, 0, b.n_tiles, out, threads);
  std::vector<uint32_t> crcs((b.n_tiles + 1) / 2);
  run_tiles(blob, b, 0, b.n_tiles, out, threads, crcs.data());
  const uint64_t item_bytes = 2 * b.tile_elems * uint64_t(b.layout->itemsize());
  const uint64_t last_bytes = b.numel * b.layout->itemsize() - (crcs.size() - 1) * item_bytes;
  if (crc32c_join(crcs.data(), crcs.size(), item_bytes, last_bytes) != b.data_crc)
    throw IntegrityError("decodes to the wrong bytes (checksum mismatch)");
}

void decode_v2_tiles(const uint8_t* blob, const BlobInfo& b, uint32_t first, uint32_t count, void* out,
                     int threads) {
  if (first > b.n_tiles || count > b.n_tiles - first) throw FormatError("tile range out of bounds");
  run_tiles(blob, b, first, count, out, threads);
}

}  // namespace fz
