#include "core/encode.h"

#include <algorithm>
#include <cstring>

#include "core/crc32c.h"
#include "core/huffman.h"
#include "core/pool.h"

namespace fz {

namespace {

constexpr uint64_t HIST_SLICE = 1 << 18;  // fewest elements worth a thread of the histogram

template <typename W>
void hist_slice(const W* w, uint64_t lo, uint64_t hi, uint32_t shift, uint32_t mask, uint64_t* h) {
  // four sub-histograms, so that runs of one symbol do not serialise on one counter
  const size_t nb = size_t(mask) + 1;
  uint64_t* h0 = h;
  uint64_t* h1 = h + nb;
  uint64_t* h2 = h + 2 * nb;
  uint64_t* h3 = h + 3 * nb;
  uint64_t i = lo;
  for (; i + 4 <= hi; i += 4) {
    h0[(w[i] >> shift) & mask]++;
    h1[(w[i + 1] >> shift) & mask]++;
    h2[(w[i + 2] >> shift) & mask]++;
    h3[(w[i + 3] >> shift) & mask]++;
  }
  for (; i < hi; ++i) h0[(w[i] >> shift) & mask]++;
}

template <typename W>
void histogram_t(const W* w, uint64_t n, const DtypeLayout& L, int threads, std::vector<uint64_t>& hist,
                 uint32_t& crc) {
  const uint32_t shift = uint32_t(L.man_bits - L.max_k());
  const uint32_t sym_bits = uint32_t(L.exp_bits + L.max_k());
  const size_t nb = size_t(1) << sym_bits;
  const uint32_t mask = uint32_t(nb - 1);
  uint64_t parts = std::max<uint64_t>(1, std::min<uint64_t>(uint64_t(threads), n / HIST_SLICE));
  std::vector<uint64_t> partial(parts * 4 * nb, 0);
  std::vector<uint32_t> crcs(parts);
  std::vector<uint64_t> lo(parts + 1);
  for (uint64_t i = 0; i <= parts; ++i) lo[i] = n * i / parts;
  parallel_for(parts, threads, [&](size_t p) {
    hist_slice(w, lo[p], lo[p + 1], shift, mask, &partial[p * 4 * nb]);
    crcs[p] = crc32c(0, reinterpret_cast<const uint8_t*>(w + lo[p]), (lo[p + 1] - lo[p]) * sizeof(W));
  });
  hist.assign(nb, 0);
  for (uint64_t p = 0; p < parts; ++p)
    for (size_t s = 0; s < 4 * nb; ++s) hist[s & mask] += partial[p * 4 * nb + s];
  crc = crcs[0];
  for (uint64_t p = 1; p < parts; ++p) crc = crc32c_combine(crc, crcs[p], (lo[p + 1] - lo[p]) * sizeof(W));
}

// Elements of lane c in a tile of m elements (group g = 32 j + c covers elements [group * g, group * g + group)).
inline uint64_t lane_symbols(uint64_t full, uint64_t tail, uint32_t group, int c) {
  int64_t extra = int64_t(tail) - int64_t(group) * c;
  return full * group + (extra <= 0 ? 0 : std::min<uint64_t>(uint64_t(extra), group));
}

template <typename W>
void lane_lengths_t(const W* w, const Plan& plan, uint32_t t, uint32_t* bits) {
  const BlobInfo& b = plan.info;
  const uint32_t shift = b.shift, mask = (1u << b.sym_bits) - 1, group = b.group;
  const uint8_t* len = plan.lengths.data();
  const uint64_t base = uint64_t(t) * b.tile_elems, m = b.tile_elements(t);
  const W* x = w + base;
  uint32_t acc[LANES] = {0};
  uint64_t groups = m / group;
  for (uint64_t g = 0; g < groups; ++g) {
    uint32_t s = 0;
    const W* y = x + g * group;
    for (uint32_t v = 0; v < group; ++v) s += len[(y[v] >> shift) & mask];
    acc[g % LANES] += s;
  }
  for (uint64_t i = groups * group; i < m; ++i) acc[(i / group) % LANES] += len[(x[i] >> shift) & mask];
  std::memcpy(bits, acc, sizeof(acc));
}

// MSB-first bit writer into 32-bit words.
struct BitWriter {
  uint32_t* out;
  uint64_t acc = 0;
  uint32_t n = 0;  // bits in acc not yet written
  explicit BitWriter(uint32_t* o) : out(o) {}
  inline void put(uint32_t code, uint32_t len) {  // len <= 32, n < 32 on entry
    acc = (acc << len) | code;
    n += len;
    if (n >= 32) {
      n -= 32;
      *out++ = uint32_t(acc >> n);
    }
  }
  inline void flush() {
    if (n) *out++ = uint32_t(acc << (32 - n));
    n = 0;
  }
};

template <typename W>
void write_tile_t(const W* w, const Plan& plan, uint32_t t, uint32_t* codes, uint32_t* raw) {
  const BlobInfo& b = plan.info;
  const uint32_t shift = b.shift, mask = (1u << b.sym_bits) - 1, group = b.group, r = b.raw_bits;
  const uint32_t sign_shift = uint32_t(sizeof(W) * 8 - 1);
  const uint32_t low_mask = (1u << shift) - 1;
  const uint32_t* enc = plan.enc.data();
  const uint64_t base = uint64_t(t) * b.tile_elems, m = b.tile_elements(t);
  const uint64_t full = m / (uint64_t(LANES) * group), tail = m - full * LANES * group;
  const W* x = w + base;
  // codes: the lanes' strings one after another, from the tile's first word
  BitWriter bw(codes + plan.tile_words[t]);
  for (int c = 0; c < LANES; ++c) {
    for (uint64_t j = 0; j < full; ++j) {
      const W* y = x + (j * LANES + uint64_t(c)) * group;
      for (uint32_t v = 0; v + 1 < group; v += 2) {
        uint32_t e1 = enc[(y[v] >> shift) & mask], e2 = enc[(y[v + 1] >> shift) & mask];
        uint32_t l2 = e2 & 31;
        bw.put(((e1 >> 5) << l2) | (e2 >> 5), (e1 & 31) + l2);
      }
    }
    uint64_t extra = lane_symbols(0, tail, group, c);
    const W* y = x + (full * LANES + uint64_t(c)) * group;
    for (uint64_t v = 0; v < extra; ++v) {
      uint32_t e = enc[(y[v] >> shift) & mask];
      bw.put(e >> 5, e & 31);
    }
  }
  bw.flush();
  // raw: each lane's fields, LSB-first, its words 32 apart; then the tail's fields in element order
  uint32_t* rt = raw + b.tile_raw_offset(t);
  const uint64_t lane_words = (full * group * r + 31) / 32;
  auto field = [&](W word) -> uint32_t {
    return (uint32_t(word >> sign_shift) << shift) | (uint32_t(word) & low_mask);
  };
  for (int c = 0; c < LANES; ++c) {
    uint32_t* o = rt + c;
    uint64_t acc = 0;
    uint32_t have = 0;
    for (uint64_t j = 0; j < full; ++j) {
      const W* y = x + (j * LANES + uint64_t(c)) * group;
      for (uint32_t v = 0; v < group; ++v) {
        acc |= uint64_t(field(y[v])) << have;
        have += r;
        if (have >= 32) {
          *o = uint32_t(acc);
          o += LANES;
          acc >>= 32;
          have -= 32;
        }
      }
    }
    if (have) *o = uint32_t(acc);
  }
  if (tail) {
    uint32_t* o = rt + LANES * lane_words;
    uint64_t acc = 0;
    uint32_t have = 0;
    for (uint64_t i = full * LANES * group; i < m; ++i) {
      acc |= uint64_t(field(x[i])) << have;
      have += r;
      if (have >= 32) {
        *o++ = uint32_t(acc);
        acc >>= 32;
        have -= 32;
      }
    }
    if (have) *o = uint32_t(acc);
  }
}

template <typename F>
void by_width(int itemsize, F&& f) {
  if (itemsize == 1)
    f(uint8_t(0));
  else if (itemsize == 2)
    f(uint16_t(0));
  else
    f(uint32_t(0));
}

uint64_t table_bytes(const uint8_t* lengths, size_t nsym) {
  uint64_t used = 0;
  for (size_t s = 0; s < nsym; ++s) used += lengths[s] != 0;
  return (nsym + 7) / 8 + (used + 1) / 2;
}

}  // namespace

void histogram(const void* words, uint64_t n, const DtypeLayout& L, int threads, std::vector<uint64_t>& hist,
               uint32_t& crc) {
  by_width(L.itemsize(), [&](auto z) {
    using W = decltype(z);
    histogram_t(static_cast<const W*>(words), n, L, threads, hist, crc);
  });
}

int choose_split(const std::vector<uint64_t>& hist, const DtypeLayout& L, uint64_t n, int max_code_len,
                 std::vector<uint8_t>& lengths) {
  const int max_k = L.max_k();
  uint64_t best_bits = UINT64_MAX;
  int best_k = max_k;
  std::vector<uint64_t> merged;
  std::vector<uint8_t> lens;
  for (int k = max_k; k >= 0; --k) {
    const size_t group = size_t(1) << (max_k - k);
    const size_t nsym = hist.size() / group;
    merged.assign(nsym, 0);
    for (size_t s = 0; s < hist.size(); ++s) merged[s / group] += hist[s];
    lens.resize(nsym);
    code_lengths(merged.data(), nsym, max_code_len, lens.data());
    uint64_t coded = 0;
    for (size_t s = 0; s < nsym; ++s) coded += merged[s] * lens[s];
    const uint64_t raw = n * uint64_t(L.man_bits - k + 1);
    const uint64_t bits = coded + raw + 8 * table_bytes(lens.data(), nsym);
    if (bits < best_bits) {
      best_bits = bits;
      best_k = k;
      lengths = lens;
    }
  }
  return best_k;
}

Plan plan_v2(const void* words, const DtypeLayout& L, const uint64_t* shape, int ndim, uint32_t steps,
             int max_code_len, int threads) {
  Plan plan;
  plan.threads = threads;
  BlobInfo& b = plan.info;
  b.layout = &L;
  b.ndim = ndim;
  uint64_t numel = 1;
  for (int i = 0; i < ndim; ++i) {
    b.shape[i] = shape[i];
    numel *= shape[i];
  }
  b.numel = numel;
  b.steps = steps;
  b.n_tables = 1;
  b.lane_map = 0;
  std::vector<uint64_t> hist;
  histogram(words, numel, L, threads, hist, b.data_crc);
  int k = numel ? choose_split(hist, L, numel, max_code_len, plan.lengths) : L.max_k();
  if (!numel) plan.lengths.assign(size_t(1) << (L.exp_bits + k), 0);
  b.sym_bits = uint32_t(L.exp_bits + k);
  b.shift = uint32_t(L.man_bits - k);
  uint32_t max_len = 0;
  for (uint8_t l : plan.lengths) max_len = std::max<uint32_t>(max_len, l);
  b.max_code_len = max_len;
  const size_t nsym = plan.lengths.size();
  std::vector<uint32_t> codes(nsym);
  canonical_codes(plan.lengths.data(), nsym, codes.data());
  plan.enc.resize(nsym);
  for (size_t s = 0; s < nsym; ++s) plan.enc[s] = (codes[s] << 5) | plan.lengths[s];
  derive_sizes(b);
  b.n_tiles = uint32_t((numel + b.tile_elems - 1) / b.tile_elems);
  derive_sizes(b);  // again: the last tile's sizes depend on n_tiles

  plan.lane_bits.assign(size_t(b.n_tiles) * LANES, 0);
  by_width(L.itemsize(), [&](auto z) {
    using W = decltype(z);
    const W* w = static_cast<const W*>(words);
    parallel_for(b.n_tiles, threads, [&](size_t t) { lane_lengths_t(w, plan, uint32_t(t), &plan.lane_bits[t * LANES]); });
  });
  plan.tile_words.assign(size_t(b.n_tiles) + 1, 0);
  plan.tile_lanes.assign(b.n_tiles, 0);
  plan.delta_at.assign(b.n_tiles, 0);
  uint64_t words_total = 0, deltas = 0;
  for (uint32_t t = 0; t < b.n_tiles; ++t) {
    const uint32_t* lb = &plan.lane_bits[size_t(t) * LANES];
    uint32_t lo = *std::min_element(lb, lb + LANES), hi = *std::max_element(lb, lb + LANES);
    uint64_t sum = 0;
    for (int c = 0; c < LANES; ++c) sum += lb[c];
    uint32_t width = 0;
    while ((uint64_t(1) << width) <= uint64_t(hi - lo) && hi != lo) ++width;
    if (lo >= (1u << BASE_BITS)) throw FormatError("a lane is too long for the format");
    plan.tile_lanes[t] = lo | (width << BASE_BITS);
    plan.delta_at[t] = deltas;
    deltas += width;
    words_total += (sum + 31) / 32;
    if (words_total > UINT32_MAX) throw FormatError("the tensor's code stream is too long for the format");
    plan.tile_words[t + 1] = uint32_t(words_total);
  }
  b.code_words = words_total;
  b.delta_words = deltas;

  // section offsets (the parser's order and alignment)
  size_t pos = align16(HEADER_FIXED + 8 * size_t(ndim));
  b.tables_at = pos;
  b.tables_len = table_bytes(plan.lengths.data(), nsym);
  pos = align16(pos + b.tables_len);
  b.tile_words_at = pos;
  pos = align16(pos + 4 * (size_t(b.n_tiles) + 1));
  b.tile_lanes_at = pos;
  pos = align16(pos + 4 * size_t(b.n_tiles));
  b.deltas_at = pos;
  pos = align16(pos + 4 * deltas);
  b.codes_at = pos;
  pos = align16(pos + 4 * (words_total + CODE_PAD_WORDS));
  b.raw_at = pos;
  pos = align16(pos + 4 * (b.raw_words + RAW_PAD_WORDS));
  b.total = pos;
  return plan;
}

void write_v2(const Plan& plan, const void* words, uint8_t* out) {
  const BlobInfo& b = plan.info;
  // zero the non-stream bytes (headers, padding); the streams are written whole below, but for their padding
  std::memset(out, 0, b.codes_at);
  std::memset(out + b.codes_at + 4 * b.code_words, 0, b.raw_at - b.codes_at - 4 * b.code_words);
  std::memset(out + b.raw_at + 4 * b.raw_words, 0, b.total - b.raw_at - 4 * b.raw_words);
  wr32(out, BLOB_MAGIC);
  out[4] = V2;
  out[5] = 0;
  out[6] = uint8_t(b.layout->code);
  out[7] = uint8_t(b.ndim);
  out[8] = uint8_t(b.sym_bits);
  out[9] = uint8_t(b.shift);
  out[10] = uint8_t(b.max_code_len);
  out[11] = uint8_t(b.n_tables);
  out[12] = uint8_t(b.lane_map);
  wr32(out + 16, b.steps);
  wr32(out + 20, b.n_tiles);
  wr64(out + 24, b.numel);
  wr64(out + 32, b.code_words);
  wr32(out + 48, b.data_crc);
  for (int i = 0; i < b.ndim; ++i) wr64(out + HEADER_FIXED + 8 * i, b.shape[i]);
  // table: used-symbol bitmap (MSB-first within a byte), then (length - 1) per used symbol in nibbles
  const size_t nsym = plan.lengths.size();
  uint8_t* bm = out + b.tables_at;
  uint8_t* nib = bm + (nsym + 7) / 8;
  size_t i = 0;
  for (size_t s = 0; s < nsym; ++s) {
    uint32_t l = plan.lengths[s];
    if (!l) continue;
    bm[s >> 3] |= uint8_t(0x80 >> (s & 7));
    nib[i >> 1] |= uint8_t((l - 1) << (4 * (i & 1)));
    ++i;
  }
  for (uint32_t t = 0; t <= b.n_tiles; ++t) wr32(out + b.tile_words_at + 4 * t, plan.tile_words[t]);
  for (uint32_t t = 0; t < b.n_tiles; ++t) wr32(out + b.tile_lanes_at + 4 * t, plan.tile_lanes[t]);
  // lane deltas: tile t's 32 values of `width` bits, LSB-first, in its `width` words
  uint32_t* dw = reinterpret_cast<uint32_t*>(out + b.deltas_at);
  for (uint32_t t = 0; t < b.n_tiles; ++t) {
    uint32_t width = plan.tile_lanes[t] >> BASE_BITS, lo = plan.tile_lanes[t] & ((1u << BASE_BITS) - 1);
    if (!width) continue;
    uint32_t* o = dw + plan.delta_at[t];
    uint64_t acc = 0;
    uint32_t have = 0;
    for (int c = 0; c < LANES; ++c) {
      acc |= uint64_t(plan.lane_bits[size_t(t) * LANES + c] - lo) << have;
      have += width;
      if (have >= 32) {
        *o++ = uint32_t(acc);
        acc >>= 32;
        have -= 32;
      }
    }
    if (have) *o = uint32_t(acc);  // 32 * width bits: never a partial word, kept for clarity
  }
  uint32_t* codes = reinterpret_cast<uint32_t*>(out + b.codes_at);
  uint32_t* raw = reinterpret_cast<uint32_t*>(out + b.raw_at);
  // every word of both streams is written whole by exactly one tile (its last, partial words too)
  by_width(b.layout->itemsize(), [&](auto z) {
    using W = decltype(z);
    const W* w = static_cast<const W*>(words);
    parallel_for(b.n_tiles, plan.threads, [&](size_t t) { write_tile_t(w, plan, uint32_t(t), codes, raw); });
  });
  wr32(out + 52, crc32c_parallel(out, b.total, plan.threads));
}

}  // namespace fz
