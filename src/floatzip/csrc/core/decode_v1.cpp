// The decoder of format v1 blobs (docs/FORMAT.md, version 1), kept so that every v1 checkpoint restores.
// v1 is parsed and cross-checked in Python (floatzip.format.blob_v1); this code re-checks the sizes it
// indexes by and bounds every read.
#include "core/decode_v1.h"

#include <atomic>
#include <string>

#include "core/huffman.h"
#include "core/pool.h"

namespace fz {

namespace {

template <typename W>
bool decode_tile_v1(const V1Streams& s, const Tables& tb, uint64_t t, W* out) {
  const uint64_t per_tile = uint64_t(s.lanes) * s.steps;
  const uint64_t base = t * per_tile;
  const uint64_t m = s.numel - base < per_tile ? s.numel - base : per_tile;
  const u32 r = s.shift + 1, bits = u32(sizeof(W) * 8);
  const u64 raw_mask = (u64(1) << r) - 1;
  const u64 last = s.n_codes - 1;
  uint64_t p = uint64_t(s.tile_words[t]) * 32;
  bool bad = false;
  for (uint32_t c = 0; c < s.lanes; ++c) {
    const uint64_t end = p + s.lane_bits[t * s.lanes + c];
    if (end > uint64_t(s.n_codes - 1) * 32) return false;  // the lane would end past the stream
    if (c >= m) {  // a lane with no element (a short last tile) has no bits
      if (end != p) return false;
      continue;
    }
    CodeReader rd;
    rd.init(s.codes, p);
    for (uint64_t e = c; e < m; e += s.lanes) {
      u32 v = rd.peek16();
      u32 ent = tb.primary[v >> (16 - PRIMARY_BITS)];
      if (ent & ENTRY_LONG) {
        ent = decode_long(tb.longc, tb.long_pattern.data(), v);
        if (!ent) {
          bad = true;
          ent = 1;
        }
      }
      rd.skip(ent & ENTRY_LEN_MASK);
      rd.refill(s.codes, last);
      // raw stream: element order, MSB-first
      const uint64_t i = base + e, b = i * r, q = b >> 5;
      const u64 pair = (u64(s.raw[q]) << 32) | s.raw[q + 1];
      const u32 field = u32((pair >> (64 - r - (b & 31))) & raw_mask);
      out[i] = W(assemble(ent, field, s.shift, bits));
    }
    if (rd.bit() != end) bad = true;
    p = end;
  }
  return !bad;
}

}  // namespace

void decode_v1(const V1Streams& s, const uint8_t* lengths, void* out, int threads) {
  const uint64_t per_tile = uint64_t(s.lanes) * s.steps;
  if (s.lanes == 0 || s.steps == 0) throw FormatError("bad tile shape");
  const uint64_t n_tiles = (s.numel + per_tile - 1) / per_tile;
  const uint64_t raw_need = (s.numel * (s.shift + 1) + 31) / 32 + 1;
  if (s.n_tile_words != n_tiles + 1 || s.n_lane_bits != n_tiles * s.lanes || s.n_codes < 2 || s.n_raw < raw_need)
    throw FormatError("the record's sections do not match its shape (corrupt data)");
  const size_t nsym = size_t(1) << s.sym_bits;
  uint64_t kraft = 0;
  for (size_t i = 0; i < nsym; ++i) {
    if (lengths[i] > MAX_CODE_LEN) throw IntegrityError("a code length exceeds 16 bits (corrupt data)");
    if (lengths[i]) kraft += uint64_t(1) << (MAX_CODE_LEN - lengths[i]);
  }
  if (kraft == 0 || kraft > (uint64_t(1) << MAX_CODE_LEN))
    throw IntegrityError("the code lengths are not a prefix code, or no symbol is used (corrupt data)");
  const Tables tb = build_tables(lengths, nsym, s.shift, s.bits);
  std::atomic<int64_t> bad_tile{-1};
  auto run = [&](auto z) {
    using W = decltype(z);
    W* o = static_cast<W*>(out);
    parallel_for(n_tiles, threads, [&](size_t t) {
      if (!decode_tile_v1(s, tb, t, o)) {
        int64_t expected = -1;
        bad_tile.compare_exchange_strong(expected, int64_t(t));
      }
    });
  };
  if (s.bits == 8)
    run(u8(0));
  else if (s.bits == 16)
    run(u16(0));
  else
    run(u32(0));
  if (bad_tile.load() >= 0)
    throw IntegrityError("tile " + std::to_string(bad_tile.load()) + " of the code stream does not decode (corrupt data)");
}

}  // namespace fz
