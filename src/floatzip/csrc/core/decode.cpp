#include "core/decode.h"

#include <atomic>
#include <cstring>
#include <string>

#include "core/crc32c.h"
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

// The host twin of the kernel's per-tile work: the lanes' start bits from the tile index (the kernel
// computes them with a warp scan), then fz_lane.h's per-lane body for each lane in turn.
template <typename W>
bool decode_tile(const uint8_t* blob, const BlobInfo& b, const View& v, const std::vector<Tables>& tables,
                 const std::vector<uint64_t>& delta_at, uint32_t t, W* out) {
  const uint8_t* table_ids = b.n_tables > 1 ? blob + b.tile_table_at : nullptr;
  const Tables& tb = tables[table_ids ? table_ids[t] : 0];
  const Code code{tb.primary.data(), &tb.longc, tb.long_pattern.data()};
  const u32 group = b.group;
  const u64 m = b.tile_elements(t);
  const u64 full = m / (u64(LANES) * group), tail = m - full * LANES * group;
  const u32* raw = v.raw + b.tile_raw_offset(t);
  const u64 lane_words = (full * group * b.raw_bits + 31) / 32;
  u64 start[LANES], end[LANES];
  lane_starts(blob, b, t, delta_at[t], start, end);
  const bool long_codes = b.max_code_len > PRIMARY_BITS;
  bool ok = true;
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
    if (job.full_steps == 0 && job.tail_count == 0) {
      ok &= job.start == job.end;
      continue;
    }
    // the lane may read 16 bits per symbol past its start (a corrupt stream), plus lookahead: a lane near
    // the stream's end reads a padded copy of what is left instead (the GPU batch pads its stream instead)
    std::vector<u32> scratch;
    const u64 n = full * group + job.tail_count;
    const u64 first_word = job.start >> 5;
    const u64 need = first_word + ((16 * n + 31) >> 5) + 4;
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
    } else {
      ok &= long_codes ? decode_lane_any<W, true>(job, code, group, lane_out, stride, tail_out)
                       : decode_lane_any<W, false>(job, code, group, lane_out, stride, tail_out);
    }
  }
  return ok;
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

std::vector<Tables> tables_of(const BlobInfo& b) {
  std::vector<Tables> out;
  const size_t nsym = size_t(1) << b.sym_bits;
  for (u32 t = 0; t < b.n_tables; ++t)
    out.push_back(build_tables(&b.lengths[t * nsym], nsym, b.shift, b.layout->bits));
  return out;
}

void run_tiles(const uint8_t* blob, const BlobInfo& b, uint32_t first, uint32_t count, void* out, int threads) {
  if (count == 0) return;
  const View v = view_of(blob, b);
  const std::vector<Tables> tables = tables_of(b);
  const std::vector<uint64_t> delta_at = delta_offsets(blob, b);
  std::atomic<int64_t> bad_tile{-1};
  by_width(b.layout->itemsize(), [&](auto z) {
    using W = decltype(z);
    W* o = static_cast<W*>(out);
    parallel_for(count, threads, [&](size_t i) {
      uint32_t t = first + uint32_t(i);
      if (!decode_tile(blob, b, v, tables, delta_at, t, o + u64(i) * b.tile_elems)) {
        int64_t expected = -1;
        bad_tile.compare_exchange_strong(expected, int64_t(t));
      }
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
  run_tiles(blob, b, 0, b.n_tiles, out, threads);
  if (check_crc) {
    uint32_t crc = crc32c_parallel(static_cast<const uint8_t*>(out), b.numel * b.layout->itemsize(), threads);
    if (crc != b.data_crc) throw IntegrityError("decodes to the wrong bytes (checksum mismatch)");
  }
}

void decode_v2_tiles(const uint8_t* blob, const BlobInfo& b, uint32_t first, uint32_t count, void* out,
                     int threads) {
  if (first > b.n_tiles || count > b.n_tiles - first) throw FormatError("tile range out of bounds");
  run_tiles(blob, b, first, count, out, threads);
}

}  // namespace fz
