#include "core/blob.h"

#include <algorithm>
#include <cstring>

#include "core/crc32c.h"
#include "core/pool.h"

namespace fz {

namespace {
const DtypeLayout LAYOUTS[] = {
    {0, 16, 8, 7},   // BF16
    {1, 16, 5, 10},  // F16
    {2, 32, 8, 23},  // F32
    {3, 8, 4, 3},    // F8_E4M3
    {4, 8, 5, 2},    // F8_E5M2
};

[[noreturn]] void bad(const std::string& what) { throw FormatError(what); }

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }
}  // namespace

const DtypeLayout* layout_for_code(int code) {
  for (const auto& l : LAYOUTS)
    if (l.code == code) return &l;
  return nullptr;
}

int blob_version(const uint8_t* blob, size_t len) {
  if (len < 8) bad("truncated floatzip blob (" + std::to_string(len) + " bytes)");
  if (rd32(blob) != BLOB_MAGIC) bad("not a floatzip blob (bad magic)");
  return blob[4] | blob[5] << 8;
}

uint64_t raw_words_for(const BlobInfo& b) {
  if (b.n_tiles == 0) return 0;
  uint64_t last = 32 * b.last_lane_raw + ceil_div(b.last_tail * b.raw_bits, 32);
  return uint64_t(b.n_tiles - 1) * b.full_tile_raw + last;
}

void derive_sizes(BlobInfo& b) {
  b.group = group_elems(b.layout->itemsize());
  b.tile_elems = uint64_t(LANES) * b.steps * b.group;
  b.raw_bits = b.shift + 1 - 8 * b.planes;
  b.full_tile_raw = uint64_t(LANES) * b.steps * b.group * b.raw_bits / 32;
  if (b.n_tiles) {
    uint64_t m = b.tile_elements(b.n_tiles - 1);
    b.last_full_steps = m / (uint64_t(LANES) * b.group);
    b.last_tail = m - b.last_full_steps * LANES * b.group;
    b.last_lane_raw = ceil_div(b.last_full_steps * b.group * b.raw_bits, 32);
  }
  b.raw_words = raw_words_for(b);
}

BlobInfo parse_v2(const uint8_t* p, size_t len, bool check_crc) {
  if (len < HEADER_FIXED) bad("truncated floatzip blob (" + std::to_string(len) + " bytes)");
  if (rd32(p) != BLOB_MAGIC) bad("not a floatzip blob (bad magic)");
  int version = p[4] | p[5] << 8;
  if (version != V2 && version != V3) bad("not a version 2 or 3 blob");
  BlobInfo b;
  b.version = version;
  b.layout = layout_for_code(p[6]);
  if (!b.layout) bad("unknown dtype code " + std::to_string(p[6]));
  b.ndim = p[7];
  b.sym_bits = p[8];
  b.shift = p[9];
  b.max_code_len = p[10];
  b.n_tables = p[11];
  b.lane_map = p[12];
  if (version == V2) {
    if (p[13] || p[14] || p[15]) bad("reserved header bytes are not zero");
  } else {
    b.planes = p[13];
    b.plane_max_len = p[14];
    if (p[15]) bad("reserved header bytes are not zero");
    if (b.layout->code != 2) bad("only F32 blobs code low planes (version 3)");
    if (b.planes < 1 || b.planes > uint32_t(MAX_PLANES)) bad("bad low plane count " + std::to_string(b.planes));
    if (b.plane_max_len > uint32_t(PLANE_MAX_LEN)) bad("bad maximum plane code length");  // 0: every plane constant
  }
  b.steps = rd32(p + 16);
  b.n_tiles = rd32(p + 20);
  b.numel = rd64(p + 24);
  b.code_words = rd64(p + 32);
  if (rd64(p + 40)) bad("reserved header bytes are not zero");
  b.data_crc = rd32(p + 48);
  b.blob_crc = rd32(p + 52);
  if (b.ndim > MAX_NDIM) bad("bad ndim " + std::to_string(b.ndim));
  if (len < HEADER_FIXED + 8 * size_t(b.ndim)) bad("truncated floatzip blob (" + std::to_string(len) + " bytes)");
  if (check_crc) {
    uint32_t crc = crc32c(0, p, 52);
    static const uint8_t zero[4] = {0, 0, 0, 0};
    crc = crc32c(crc, zero, 4);
    crc = crc32c_parallel(crc, p + 56, len - 56, default_threads());
    if (crc != b.blob_crc) throw IntegrityError("checksum mismatch (the blob is corrupt)");
  }
  // shape: the product must be numel, computed without overflow
  unsigned __int128 prod = 1;
  bool zero_dim = false;
  for (int i = 0; i < b.ndim; ++i) {
    b.shape[i] = rd64(p + HEADER_FIXED + 8 * i);
    // every dimension bounded, a zero one beside it or not (a shape of (0, 2^64 - 1) is no tensor anyone
    // can allocate, even empty)
    if (b.shape[i] > (uint64_t(1) << 62)) bad("a dimension of the shape is too large");
    if (b.shape[i] == 0) zero_dim = true;
    if (!zero_dim) {
      prod *= b.shape[i];
      if (prod > (unsigned __int128)(uint64_t(1) << 62)) bad("the shape holds too many elements");
    }
  }
  if (zero_dim) prod = 0;
  if (uint64_t(prod) != b.numel) bad("the shape does not hold numel elements");
  int k = int(b.sym_bits) - b.layout->exp_bits;
  if (k < 0 || k > b.layout->max_k() || int(b.shift) != b.layout->man_bits - k) bad("bad symbol split");
  if (b.lane_map != 0) bad("unknown lane map " + std::to_string(b.lane_map));
  if (b.steps < 8 || b.steps > MAX_STEPS || b.steps % 8) bad("bad steps per tile " + std::to_string(b.steps));
  if (b.n_tables < 1 || b.n_tables > MAX_TABLES) bad("bad table count " + std::to_string(b.n_tables));
  if (b.max_code_len > MAX_CODE_LEN) bad("bad maximum code length");
  if (b.shift < 8 * b.planes) bad("the low planes overlap the symbol");
  derive_sizes(b);
  if (b.n_tiles != ceil_div(b.numel, b.tile_elems)) bad("the tile count does not cover numel elements");
  if (b.code_words > (uint64_t(1) << 40)) bad("the code stream is too long");

  // sections, in order
  size_t pos = align16(HEADER_FIXED + 8 * size_t(b.ndim));
  const size_t nsym = size_t(1) << b.sym_bits;
  b.tables_at = pos;
  b.lengths.assign(b.n_tables * nsym, 0);
  // one code table (bitmap over nsym symbols, then length - 1 per used symbol in nibbles) into lens, at pos. A
  // plane table with one used byte has no nibbles: that byte takes 0 bits (its length reads 1 in lens).
  auto table = [&](size_t count, uint32_t max_len, uint8_t* lens, uint32_t& seen_max, bool plane) {
    const size_t bitmap = (count + 7) / 8;
    if (pos + bitmap > len) bad("truncated floatzip blob (tables)");
    const uint8_t* bm = p + pos;
    size_t used = 0;
    for (size_t s = 0; s < count; ++s) used += (bm[s >> 3] >> (7 - (s & 7))) & 1;
    if (count % 8) {
      if (bm[bitmap - 1] & ((1u << (8 - count % 8)) - 1)) bad("bits beyond the last symbol are set in a table");
    }
    const bool constant = plane && used == 1;
    size_t nib = constant ? 0 : (used + 1) / 2;
    if (pos + bitmap + nib > len) bad("truncated floatzip blob (tables)");
    const uint8_t* nb = bm + bitmap;
    size_t i = 0;
    uint64_t kraft = 0;
    for (size_t s = 0; s < count; ++s) {
      if (!((bm[s >> 3] >> (7 - (s & 7))) & 1)) continue;
      if (constant) {
        lens[s] = 1;
        continue;
      }
      uint32_t l = ((nb[i >> 1] >> (4 * (i & 1))) & 15) + 1;
      if (l > max_len) bad("a code is longer than its table allows");
      lens[s] = uint8_t(l);
      kraft += uint64_t(1) << (MAX_CODE_LEN - l);
      if (l > seen_max) seen_max = l;
      ++i;
    }
    if (!constant && used % 2 && (nb[nib - 1] >> 4)) bad("a table's padding nibble is not zero");
    if (kraft > (uint64_t(1) << MAX_CODE_LEN)) bad("the code lengths do not form a prefix code (Kraft sum above 1)");
    if (b.numel && used == 0) bad("a code table has no symbol");
    pos += bitmap + nib;
  };
  uint32_t seen_max = 0;
  for (uint32_t t = 0; t < b.n_tables; ++t) table(nsym, MAX_CODE_LEN, &b.lengths[t * nsym], seen_max, false);
  // version 3: each table's plane tables, table after table, in lane order
  uint32_t seen_plane = 0;
  b.plane_lengths.assign(size_t(b.n_tables) * b.planes * PLANE_SYMBOLS, 0);
  std::vector<uint32_t> coded_planes(b.n_tables, 0);  // per table: its planes whose codes take bits
  for (uint32_t t = 0; t < b.n_tables * b.planes; ++t) {
    const uint8_t* lens = &b.plane_lengths[t * PLANE_SYMBOLS];
    table(PLANE_SYMBOLS, b.plane_max_len, &b.plane_lengths[t * PLANE_SYMBOLS], seen_plane, true);
    coded_planes[t / b.planes] += std::count_if(lens, lens + PLANE_SYMBOLS, [](uint8_t l) { return l != 0; }) > 1;
  }
  if (seen_plane != b.plane_max_len) bad("the maximum plane code length does not match the tables");
  if (seen_max != b.max_code_len) bad("the maximum code length does not match the tables");
  b.tables_len = pos - b.tables_at;
  pos = align16(pos);
  if (b.n_tables > 1) {
    b.tile_table_at = pos;
    if (pos + b.n_tiles > len) bad("truncated floatzip blob (tile tables)");
    for (uint32_t t = 0; t < b.n_tiles; ++t)
      if (p[pos + t] >= b.n_tables) bad("a tile names a table that does not exist");
    pos = align16(pos + b.n_tiles);
  }
  b.tile_words_at = pos;
  pos = align16(pos + 4 * (size_t(b.n_tiles) + 1));
  b.tile_lanes_at = pos;
  pos = align16(pos + 4 * size_t(b.n_tiles));
  if (pos > len) bad("truncated floatzip blob (tile index)");
  const uint8_t* tw = p + b.tile_words_at;
  const uint8_t* tl = p + b.tile_lanes_at;
  b.delta_words = 0;
  for (uint32_t t = 0; t < b.n_tiles; ++t) {
    uint32_t width = rd32(tl + 4 * t) >> BASE_BITS;
    if (width > 24) bad("bad lane length width");
    b.delta_words += width;
  }
  b.deltas_at = pos;
  pos = align16(pos + 4 * b.delta_words);
  b.codes_at = pos;
  pos = align16(pos + 4 * (b.code_words + CODE_PAD_WORDS));
  b.raw_at = pos;
  pos = align16(pos + 4 * (b.raw_words + RAW_PAD_WORDS));
  b.total = pos;
  if (b.total != len) {
    bad("blob is " + std::to_string(len) + " bytes, its header implies " + std::to_string(b.total) +
        " (truncated or padded)");
  }
  // the tile index: every lane's length in range, every tile's lanes filling its words exactly
  if (rd32(tw) != 0) bad("tile offsets do not match the lane lengths");
  const uint8_t* dw = p + b.deltas_at;
  uint64_t dpos = 0;  // bit position in the deltas
  for (uint32_t t = 0; t < b.n_tiles; ++t) {
    const uint32_t coded = b.planes ? coded_planes[b.n_tables > 1 ? p[b.tile_table_at + t] : 0] : 0;
    uint32_t v = rd32(tl + 4 * t);
    uint32_t base = v & ((1u << BASE_BITS) - 1), width = v >> BASE_BITS;
    uint64_t m = b.tile_elements(t);
    uint64_t full = m / (uint64_t(LANES) * b.group), tail = m - full * LANES * b.group;
    uint64_t sum = 0;
    uint32_t min_delta = UINT32_MAX;
    for (int c = 0; c < LANES; ++c) {
      uint32_t d = 0;
      if (width) {
        uint64_t q = dpos >> 5, o = dpos & 31;
        uint64_t pair = uint64_t(rd32(dw + 4 * q)) | (o + width > 32 ? uint64_t(rd32(dw + 4 * q + 4)) << 32 : 0);
        d = uint32_t((pair >> o) & ((uint64_t(1) << width) - 1));
        dpos += width;
      }
      if (d < min_delta) min_delta = d;
      uint64_t syms = full * b.group;
      int64_t extra = int64_t(tail) - int64_t(b.group) * c;
      syms += extra <= 0 ? 0 : (extra > int64_t(b.group) ? b.group : uint64_t(extra));
      uint64_t bits = uint64_t(base) + d;
      // each element is 1 + planes codes: a symbol's of at most max_code_len bits, planes' of at most
      // plane_max_len, at least one bit each but for a constant plane's (none)
      const uint64_t lo = syms * (1 + coded), hi = syms * ((b.max_code_len ? b.max_code_len : 1) + coded * b.plane_max_len);
      if (bits < lo || bits > hi) {
        bad("tile " + std::to_string(t) + ": a lane's length does not fit its symbols");
      }
      sum += bits;
    }
    if (width && min_delta != 0) bad("tile " + std::to_string(t) + ": the lane base is not the shortest lane");
    uint64_t start = rd32(tw + 4 * t), end = rd32(tw + 4 * (t + 1));
    if (end < start || end - start != ceil_div(sum, 32)) bad("tile offsets do not match the lane lengths");
  }
  if (rd32(tw + 4 * size_t(b.n_tiles)) != b.code_words) bad("tile offsets do not match the code stream");
  // padding words are zero (they are read as lookahead, and a writer must not hide data there)
  for (int i = 0; i < CODE_PAD_WORDS; ++i)
    if (rd32(p + b.codes_at + 4 * (b.code_words + i))) bad("the code stream's padding is not zero");
  for (int i = 0; i < RAW_PAD_WORDS; ++i)
    if (rd32(p + b.raw_at + 4 * (b.raw_words + i))) bad("the raw stream's padding is not zero");
  return b;
}

}  // namespace fz
