#include "core/encode.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "core/crc32c.h"
#include "core/huffman.h"
#include "core/pool.h"

namespace fz {

namespace {

constexpr uint64_t HIST_SLICE = 1 << 18;  // fewest elements worth a thread of the histogram
constexpr uint64_t WORD_TABLE_MIN = 1 << 17;  // a 16-bit tensor this large is coded through a 64K-entry table

// Append the low ``nbits`` (at most 32) of ``bits`` to one lane's raw words: the lane's words are LANES apart
// (raw fields interleaved by lane), ``acc`` holds the ``have`` (< 32) bits not yet complete. The current word
// is stored on every call (branch-free); ``o`` moves on only once it is full.
inline void raw_put(uint64_t& acc, uint32_t& have, uint32_t*& o, uint64_t bits, uint32_t nbits) {
  acc |= bits << have;
  have += nbits;
  const uint32_t done = have >> 5;  // 0 or 1
  *o = uint32_t(acc);
  o += done * LANES;
  acc >>= done * 32;
  have -= done * 32;
}

// Counts of (w >> shift) & mask over [lo, hi), added to h (nb bins). Slices of at most 2^32 - 1 elements:
// the counters are 32-bit. Large slices use four sub-histograms, so that runs of one symbol do not
// serialise on one counter; small ones one (zeroing four would cost more than it saves).
template <typename W>
void hist_slice(const W* w, uint64_t lo, uint64_t hi, uint32_t shift, uint32_t mask, uint64_t* h) {
  const size_t nb = size_t(mask) + 1;
  constexpr uint64_t CHUNK = uint64_t(1) << 31;
  for (uint64_t a = lo; a < hi; a += CHUNK) {
    const uint64_t b = std::min(hi, a + CHUNK);
    if (b - a < (uint64_t(1) << 16)) {
      std::vector<uint32_t> c(nb, 0);
      for (uint64_t i = a; i < b; ++i) c[(w[i] >> shift) & mask]++;
      for (size_t s = 0; s < nb; ++s) h[s] += c[s];
      continue;
    }
    std::vector<uint32_t> c(4 * nb, 0);
    uint32_t* c0 = c.data();
    uint32_t* c1 = c0 + nb;
    uint32_t* c2 = c1 + nb;
    uint32_t* c3 = c2 + nb;
    uint64_t i = a;
    for (; i + 4 <= b; i += 4) {
      c0[(w[i] >> shift) & mask]++;
      c1[(w[i + 1] >> shift) & mask]++;
      c2[(w[i + 2] >> shift) & mask]++;
      c3[(w[i + 3] >> shift) & mask]++;
    }
    for (; i < b; ++i) c0[(w[i] >> shift) & mask]++;
    for (size_t s = 0; s < nb; ++s) h[s] += uint64_t(c0[s]) + c1[s] + c2[s] + c3[s];
  }
}

template <typename W>
void histogram_t(const W* w, uint64_t n, const DtypeLayout& L, int threads, std::vector<uint64_t>& hist,
                 uint32_t& crc) {
  const uint32_t shift = uint32_t(L.man_bits - L.max_k());
  const uint32_t sym_bits = uint32_t(L.exp_bits + L.max_k());
  const size_t nb = size_t(1) << sym_bits;
  const uint32_t mask = uint32_t(nb - 1);
  uint64_t parts = std::max<uint64_t>(1, std::min<uint64_t>(uint64_t(threads), n / HIST_SLICE));
  if (parts == 1) {  // a small tensor: no partial histograms to zero, copy and add
    hist.assign(nb, 0);
    hist_slice(w, 0, n, shift, mask, hist.data());
    crc = crc32c(0, reinterpret_cast<const uint8_t*>(w), n * sizeof(W));
    return;
  }
  std::vector<uint64_t> partial(parts * nb, 0);
  std::vector<uint32_t> crcs(parts);
  std::vector<uint64_t> lo(parts + 1);
  for (uint64_t i = 0; i <= parts; ++i) lo[i] = n * i / parts;
  parallel_for(parts, threads, [&](size_t p) {
    hist_slice(w, lo[p], lo[p + 1], shift, mask, &partial[p * nb]);
    crcs[p] = crc32c(0, reinterpret_cast<const uint8_t*>(w + lo[p]), (lo[p + 1] - lo[p]) * sizeof(W));
  });
  hist.assign(partial.begin(), partial.begin() + nb);
  for (uint64_t p = 1; p < parts; ++p)
    for (size_t s = 0; s < nb; ++s) hist[s] += partial[p * nb + s];
  crc = crcs[0];
  for (uint64_t p = 1; p < parts; ++p) crc = crc32c_combine(crc, crcs[p], (lo[p + 1] - lo[p]) * sizeof(W));
}

// Elements of lane c in a tile of m elements (group g = 32 j + c covers elements [group * g, group * g + group)).
inline uint64_t lane_symbols(uint64_t full, uint64_t tail, uint32_t group, int c) {
  int64_t extra = int64_t(tail) - int64_t(group) * c;
  return full * group + (extra <= 0 ? 0 : std::min<uint64_t>(uint64_t(extra), group));
}

// MSB-first bit writer into 32-bit words. Branch-free: the current word is stored on every put and the
// pointer moves only when it is complete (a partial word is rewritten until it is).
struct BitWriter {
  uint64_t acc = 0;
  uint32_t n = 0;  // bits in acc not yet complete
  uint32_t* out = nullptr;
  inline void put(uint32_t code, uint32_t len) {  // len <= 32, n < 32 on entry
    acc = (acc << len) | code;
    n += len;
    const uint32_t full = n >> 5;
    n -= full << 5;
    *out = uint32_t(acc >> n);
    out += full;
  }
};

// A tile's codes, each lane into its own scratch while the tile is walked in memory order (each step's
// groups belong to lanes 0..31 in turn), then the 32 strings concatenated into the tile's words; the raw
// fields go straight to their place. Returns the tile's words; lane_bits gets each lane's length.
template <typename W>
void encode_tile_t(const W* w, const Plan& plan, uint32_t t, uint32_t* lane_bits, std::vector<uint32_t>& out,
                   uint32_t* raw) {
  const BlobInfo& b = plan.info;
  const uint32_t shift = b.shift, mask = (1u << b.sym_bits) - 1, group = b.group, r = b.raw_bits;
  // the raw field: the sign above the mantissa bits between the coded low planes (8 planes bits) and the symbol
  const uint32_t planes = b.planes, low_shift = 8 * planes, mid = shift - low_shift;
  const uint32_t sign_shift = uint32_t(sizeof(W) * 8 - 1), low_mask = (1u << mid) - 1;
  const size_t table = plan.tile_table.empty() ? 0 : plan.tile_table[t];
  const uint32_t* enc = plan.enc.data() + (table << b.sym_bits);
  const uint32_t* penc = planes ? plan.plane_enc.data() + table * planes * PLANE_SYMBOLS : nullptr;
  const uint64_t m = b.tile_elements(t);
  const uint64_t full = m / (uint64_t(LANES) * group), tail = m - full * LANES * group;
  const W* x = w + uint64_t(t) * b.tile_elems;
  // an element's codes, symbol then planes (higher plane first); symbol_code: the symbol's alone
  auto element_codes = [&](BitWriter& wr, W word) {
    const uint32_t e = enc[(word >> shift) & mask];
    wr.put(e >> 5, e & 31);
    for (uint32_t q = 0; q < planes; ++q) {
      const uint32_t pe = penc[q * PLANE_SYMBOLS + ((uint32_t(word) >> (8 * (planes - 1 - q))) & 255)];
      wr.put(pe >> 5, pe & 31);
    }
  };
  // each lane's scratch holds at most max_element_bits per element, plus a word for the branch-free store
  const uint64_t lane_cap = (max_element_bits(planes) * (full + 1) * group + 31) / 32 + 2;
  thread_local std::vector<uint32_t> scratch;
  if (scratch.size() < LANES * lane_cap) scratch.resize(LANES * lane_cap);
  BitWriter bw[LANES];
  for (int c = 0; c < LANES; ++c) bw[c].out = scratch.data() + c * lane_cap;
  // raw fields: lane c's word i at raw + 32 i + c (16-bit dtypes with 4-bit fields: one word per group,
  // in memory order, because a group is 8 fields)
  uint32_t* rt = raw + b.tile_raw_offset(t);
  const bool raw_by_group = sizeof(W) == 2 && r == 4;
  uint64_t racc[LANES] = {0};
  uint32_t rhave[LANES] = {0};
  uint32_t* rout[LANES];
  for (int c = 0; c < LANES; ++c) rout[c] = rt + c;
  auto field = [&](W word) -> uint32_t {
    return (uint32_t(word >> sign_shift) << mid) | ((uint32_t(word) >> low_shift) & low_mask);
  };
  const uint64_t groups = full * LANES;
  if constexpr (sizeof(W) == 2) {
    if (!plan.word_table.empty()) {
      // one lookup per element: (code << 16) | (length << 11) | raw field (docs in Plan::word_table)
      const uint32_t* wt = plan.word_table.data() + (table << 16);
      // the raw width fixed at compile time: a group's fields are joined K at a time with constant shifts
      // and appended to the lane's words together (K R <= 32 bits, so an append completes at most a word)
      auto run = [&](auto width) {
        constexpr uint32_t R = decltype(width)::value, K = R <= 8 ? 4 : 2;
        for (uint64_t g = 0; g < groups; ++g) {
          const W* y = x + g * group;
          const uint32_t c = uint32_t(g % LANES);
          BitWriter wr = bw[c];
          uint32_t f[8];
          for (uint32_t v = 0; v < 8; v += 2) {
            const uint32_t e1 = wt[y[v]], e2 = wt[y[v + 1]];
            const uint32_t l1 = (e1 >> 11) & 31, l2 = (e2 >> 11) & 31;
            wr.put(((e1 >> 16) << l2) | (e2 >> 16), l1 + l2);
            f[v] = e1 & 0x7FF;
            f[v + 1] = e2 & 0x7FF;
          }
          bw[c] = wr;
          if constexpr (R == 4) {
            rt[g] = f[0] | f[1] << 4 | f[2] << 8 | f[3] << 12 | f[4] << 16 | f[5] << 20 | f[6] << 24 | f[7] << 28;
          } else {
            uint64_t acc = racc[c];
            uint32_t have = rhave[c];
            uint32_t* o = rout[c];
            for (uint32_t v = 0; v < 8; v += K) {
              uint64_t chunk = 0;
              for (uint32_t k = 0; k < K; ++k) chunk |= uint64_t(f[v + k]) << (k * R);
              raw_put(acc, have, o, chunk, K * R);  // have < 32 and K R <= 32: fits in 64 bits
            }
            racc[c] = acc;
            rhave[c] = have;
            rout[c] = o;
          }
        }
      };
      switch (r) {
        case 4: run(std::integral_constant<uint32_t, 4>()); break;
        case 5: run(std::integral_constant<uint32_t, 5>()); break;
        case 6: run(std::integral_constant<uint32_t, 6>()); break;
        case 7: run(std::integral_constant<uint32_t, 7>()); break;
        case 8: run(std::integral_constant<uint32_t, 8>()); break;
        case 9: run(std::integral_constant<uint32_t, 9>()); break;
        case 10: run(std::integral_constant<uint32_t, 10>()); break;
        case 11: run(std::integral_constant<uint32_t, 11>()); break;
        default: throw std::logic_error("16-bit raw width out of range");
      }
      goto tail_part;
    }
  }
  for (uint64_t g = 0; g < groups; ++g) {
    const W* y = x + g * group;
    const uint32_t c = uint32_t(g % LANES);
    BitWriter wr = bw[c];
    if (planes) {
      for (uint32_t v = 0; v < group; ++v) element_codes(wr, y[v]);
    } else {
      for (uint32_t v = 0; v < group; v += 2) {
        const uint32_t e1 = enc[(y[v] >> shift) & mask], e2 = enc[(y[v + 1] >> shift) & mask];
        const uint32_t l2 = e2 & 31;
        wr.put(((e1 >> 5) << l2) | (e2 >> 5), (e1 & 31) + l2);
      }
    }
    bw[c] = wr;
    if (raw_by_group) {
      uint32_t word = 0;
      for (uint32_t v = 0; v < 8; ++v) word |= field(y[v]) << (4 * v);
      rt[g] = word;
    } else {
      uint64_t acc = racc[c];
      uint32_t have = rhave[c];
      uint32_t* o = rout[c];
      for (uint32_t v = 0; v < group; ++v) {
        raw_put(acc, have, o, field(y[v]), r);
      }
      racc[c] = acc;
      rhave[c] = have;
      rout[c] = o;
    }
  }
tail_part:
  if (!raw_by_group) {
    for (int c = 0; c < LANES; ++c)
      if (rhave[c]) *rout[c] = uint32_t(racc[c]);
  }
  // the tail: lane c's extra symbols after its full steps; their raw fields in element order
  if (tail) {
    for (int c = 0; c < LANES; ++c) {
      const uint64_t extra = lane_symbols(0, tail, group, c);
      const W* y = x + (groups + uint64_t(c)) * group;
      for (uint64_t v = 0; v < extra; ++v) element_codes(bw[c], y[v]);
    }
    uint32_t* o = rt + LANES * ((full * group * r + 31) / 32);
    uint64_t acc = 0;
    uint32_t have = 0;
    for (uint64_t i = groups * group; i < m; ++i) {
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
  // concatenate the lanes' strings, no gap, into the tile's words (zero-padded to a word)
  uint64_t total = 0;
  for (int c = 0; c < LANES; ++c) {
    const uint32_t* first = scratch.data() + c * lane_cap;
    lane_bits[c] = uint32_t((bw[c].out - first) * 32 + bw[c].n);
    total += lane_bits[c];
  }
  out.assign((total + 31) / 32 + 1, 0);
  uint64_t at = 0;
  for (int c = 0; c < LANES; ++c) {
    const uint32_t* src = scratch.data() + c * lane_cap;
    const uint32_t nbits = lane_bits[c];
    const uint32_t nwords = (nbits + 31) / 32;
    // the lane's last word, left-justified (its low bits zero)
    uint32_t* last = scratch.data() + c * lane_cap + (nbits >> 5);
    if (nbits & 31) *last = uint32_t(bw[c].acc << (32 - (nbits & 31)));
    const uint32_t s = uint32_t(at & 31);
    uint32_t* o = out.data() + (at >> 5);
    if (s == 0) {
      std::memcpy(o, src, 4 * size_t(nwords));
    } else {
      for (uint32_t i = 0; i < nwords; ++i) {
        o[i] |= src[i] >> s;
        o[i + 1] = src[i] << (32 - s);
      }
    }
    at += nbits;
  }
  out.resize((total + 31) / 32);
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


// Per-tile symbol counts at the chosen split, dense over the tensor's used symbols (`used`, ascending: every
// tile's symbols are among them), tile after tile: u counts per tile. mean: each tile's mean symbol, the tiles'
// first ordering (the exponent follows the rows' scale).
struct TileHists {
  size_t n = 0, u = 0;
  std::vector<uint32_t> used;  // compact index -> symbol
  std::vector<uint32_t> cnt;   // n * u
  std::vector<double> mean;    // n
};

// Tensors whose dense tile counts would pass this many entries keep one table (a 2^30-element BF16 tensor of
// 32768 tiles and 1024 used symbols is at the limit: 128 MiB of counts).
constexpr uint64_t TILE_HIST_MAX = uint64_t(1) << 25;

template <typename W>
void tile_hists_t(const W* w, const BlobInfo& b, int threads, TileHists& out) {
  const uint32_t shift = b.shift, mask = (1u << b.sym_bits) - 1;
  const size_t u = out.u;
  out.n = b.n_tiles;
  out.cnt.assign(out.n * u, 0);
  out.mean.assign(out.n, 0);
  parallel_for(b.n_tiles, threads, [&](size_t t) {
    thread_local std::vector<uint32_t> h;
    h.assign(size_t(mask) + 1, 0);
    const W* x = w + uint64_t(t) * b.tile_elems;
    const uint64_t m = b.tile_elements(uint32_t(t));
    for (uint64_t i = 0; i < m; ++i) h[(x[i] >> shift) & mask]++;
    uint32_t* c = &out.cnt[t * u];
    double sum = 0;
    for (size_t i = 0; i < u; ++i) {
      c[i] = h[out.used[i]];
      sum += double(out.used[i]) * c[i];
    }
    out.mean[t] = m ? sum / double(m) : 0;
  });
}

// Code bits of a tile (u dense counts) under a table's lengths over the same symbols; UINT64_MAX when the table
// lacks one of its symbols. A tile's code bits fit 32 bits (at most 2^22 symbols of at most 16 bits), so the
// loop is 32-bit and branch-free: the compiler vectorises it.
uint64_t tile_cost(const uint32_t* cnt, const uint8_t* lens, size_t u) {
  uint32_t bits = 0, missing = 0;
  for (size_t i = 0; i < u; ++i) {
    const uint32_t l = lens[i];
    bits += cnt[i] * l;
    missing |= l == 0 ? cnt[i] : 0;
  }
  return missing ? UINT64_MAX : bits;
}

uint64_t table_bytes_u(const uint8_t* lens, size_t u, size_t nsym) {
  uint64_t used = 0;
  for (size_t i = 0; i < u; ++i) used += lens[i] != 0;
  return (nsym + 7) / 8 + (used + 1) / 2;
}

// Tables for groups of tiles during Lloyd's iteration: each table's pooled symbol counts are kept up to date
// as tiles move, and only a table whose tiles changed gets its lengths (package-merge) again.
struct Clusters {
  size_t k = 0, u = 0;
  std::vector<uint64_t> pooled;  // k * u
  std::vector<uint8_t> lens;     // k * u
  std::vector<size_t> tiles;     // tiles per table
  std::vector<uint8_t> dirty;    // lengths out of date

  void add(const uint32_t* cnt, size_t j, bool remove) {
    uint64_t* h = &pooled[j * u];
    if (remove) {
      for (size_t i = 0; i < u; ++i) h[i] -= cnt[i];
      tiles[j]--;
    } else {
      for (size_t i = 0; i < u; ++i) h[i] += cnt[i];
      tiles[j]++;
    }
    dirty[j] = 1;
  }
  // Tables left without a tile are dropped and the assignment renumbered; lengths made for the changed ones.
  void refresh(std::vector<uint8_t>& assign, int max_code_len, int threads) {
    std::vector<uint8_t> renum(k, 0);
    size_t kept = 0;
    for (size_t j = 0; j < k; ++j) {
      if (!tiles[j]) continue;
      renum[j] = uint8_t(kept);
      if (kept != j) {
        std::copy_n(&pooled[j * u], u, &pooled[kept * u]);
        std::copy_n(&lens[j * u], u, &lens[kept * u]);
        tiles[kept] = tiles[j];
        dirty[kept] = dirty[j];
      }
      ++kept;
    }
    if (kept != k) {
      for (uint8_t& a : assign) a = renum[a];
      k = kept;
      pooled.resize(k * u);
      lens.resize(k * u);
      tiles.resize(k);
      dirty.resize(k);
    }
    std::vector<size_t> todo;
    for (size_t j = 0; j < k; ++j)
      if (dirty[j]) todo.push_back(j);
    // the compact symbols keep the symbols' order, so these are the lengths code_lengths gives over all nsym
    parallel_for(todo.size(), threads, [&](size_t i) {
      const size_t j = todo[i];
      code_lengths(&pooled[j * u], u, max_code_len, &lens[j * u]);
    });
    for (size_t j : todo) dirty[j] = 0;
  }
};

// Up to max_tables codes per tensor, one named per tile (FORMAT.md §1.2), where they make the blob smaller:
// for each table count, tiles start in groups of equal size by mean symbol and move to the table that codes
// them in the fewest bits (Lloyd's iteration on real code lengths) until none moves. The cost counted is the
// codes, the tables and the tile_table section. The table counts are tried in increasing order and the search
// stops at the first that does not beat the best so far. Deterministic: every tile's move is decided from the
// same tables whatever the thread count, and the tables are rebuilt from the same counts.
void choose_tables(const TileHists& th, size_t nsym, int max_code_len, size_t max_tables, int threads,
                   std::vector<uint8_t>& lengths, std::vector<uint8_t>& tile_table) {
  const size_t n = th.n, u = th.u;
  const uint32_t* cnt = th.cnt.data();
  auto total = [&](const std::vector<uint8_t>& assign, const uint8_t* lens, size_t k) {
    uint64_t bits = 0;
    for (size_t t = 0; t < n; ++t) bits += tile_cost(cnt + t * u, lens + assign[t] * u, u);
    for (size_t j = 0; j < k; ++j) bits += 8 * table_bytes_u(lens + j * u, u, nsym);
    if (k > 1) bits += 8 * (n + 15);  // the tile_table section, aligned
    return bits;
  };
  std::vector<uint8_t> one(n, 0), lens1(u);  // `lengths` comes in as the whole tensor's code
  for (size_t i = 0; i < u; ++i) lens1[i] = lengths[th.used[i]];
  tile_table.clear();
  uint64_t best = total(one, lens1.data(), 1);
  std::vector<uint8_t> best_lens;
  size_t best_k = 1;
  std::vector<size_t> order(n);
  for (size_t t = 0; t < n; ++t) order[t] = t;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t c) { return th.mean[a] < th.mean[c]; });
  std::vector<uint8_t> next(n);
  for (size_t k0 : {size_t(2), size_t(3), size_t(4), size_t(6), size_t(8), size_t(12), size_t(16)}) {
    if (k0 > n || k0 > max_tables) break;
    std::vector<uint8_t> assign(n);
    for (size_t i = 0; i < n; ++i) assign[order[i]] = uint8_t(i * k0 / n);
    Clusters cl;
    cl.k = k0;
    cl.u = u;
    cl.pooled.assign(k0 * u, 0);
    cl.lens.assign(k0 * u, 0);
    cl.tiles.assign(k0, 0);
    cl.dirty.assign(k0, 1);
    for (size_t t = 0; t < n; ++t) cl.add(cnt + t * u, assign[t], false);
    cl.refresh(assign, max_code_len, threads);
    for (int iter = 0; iter < 12; ++iter) {
      const size_t k = cl.k;
      const uint8_t* lens = cl.lens.data();
      parallel_for((n + 63) / 64, threads, [&](size_t blk) {
        for (size_t t = 64 * blk; t < std::min(n, 64 * blk + 64); ++t) {
          uint8_t a = assign[t];
          uint64_t c0 = tile_cost(cnt + t * u, lens + a * u, u);
          for (size_t j = 0; j < k; ++j) {
            const uint64_t c = tile_cost(cnt + t * u, lens + j * u, u);
            if (c < c0) {
              c0 = c;
              a = uint8_t(j);
            }
          }
          next[t] = a;
        }
      });
      bool moved = false;
      for (size_t t = 0; t < n; ++t) {
        if (next[t] == assign[t]) continue;
        cl.add(cnt + t * u, assign[t], true);
        cl.add(cnt + t * u, next[t], false);
        assign[t] = next[t];
        moved = true;
      }
      if (!moved) break;
      cl.refresh(assign, max_code_len, threads);
    }
    const uint64_t bits = total(assign, cl.lens.data(), cl.k);
    if (cl.k > 1 && bits < best) {
      best = bits;
      best_lens = cl.lens;
      best_k = cl.k;
      tile_table = assign;
    } else if (k0 > 2) {
      break;  // more tables than this no longer pay (two are always tried)
    }
  }
  if (best_k == 1) return;
  lengths.assign(best_k * nsym, 0);
  for (size_t j = 0; j < best_k; ++j)
    for (size_t i = 0; i < u; ++i) lengths[j * nsym + th.used[i]] = best_lens[j * u + i];
}

// Bytes of a plane table: §1.2's, without nibbles for a constant plane (one used byte, coded in 0 bits).
uint64_t plane_table_bytes(const uint8_t* lengths) {
  const auto used = std::count_if(lengths, lengths + PLANE_SYMBOLS, [](uint8_t l) { return l != 0; });
  return used == 1 ? (PLANE_SYMBOLS + 7) / 8 : table_bytes(lengths, PLANE_SYMBOLS);
}

// Counts of the two lowest bytes of F32 words (bits 0..7, then 8..15) per code table: out[(table * 2 + plane) *
// 256 + byte], over every `stride`-th tile. Tiles are counted in parallel, a chunk of them at a time, and added
// per table in tile order.
void plane_hists(const uint32_t* w, const BlobInfo& b, const std::vector<uint8_t>& tile_table, int threads,
                 std::vector<uint64_t>& out, uint32_t stride = 1) {
  out.assign(size_t(b.n_tables) * 2 * PLANE_SYMBOLS, 0);
  constexpr uint32_t CHUNK = 1024;
  std::vector<uint32_t> cnt(size_t(CHUNK) * 2 * PLANE_SYMBOLS);
  const uint32_t counted = (b.n_tiles + stride - 1) / stride;
  for (uint32_t t0 = 0; t0 < counted; t0 += CHUNK) {
    const uint32_t n = std::min(CHUNK, counted - t0);
    parallel_for(n, threads, [&](size_t i) {
      uint32_t* c = &cnt[i * 2 * PLANE_SYMBOLS];
      std::fill_n(c, 2 * PLANE_SYMBOLS, 0u);
      const uint32_t t = (t0 + uint32_t(i)) * stride;
      const uint32_t* x = w + uint64_t(t) * b.tile_elems;
      const uint64_t m = b.tile_elements(t);
      for (uint64_t k = 0; k < m; ++k) {
        c[x[k] & 255]++;
        c[PLANE_SYMBOLS + ((x[k] >> 8) & 255)]++;
      }
    });
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t t = (t0 + i) * stride;
      uint64_t* o = &out[size_t(tile_table.empty() ? 0 : tile_table[t]) * 2 * PLANE_SYMBOLS];
      for (size_t k = 0; k < 2 * PLANE_SYMBOLS; ++k) o[k] += cnt[i * 2 * PLANE_SYMBOLS + k];
    }
  }
}

// Whether coding a low plane may pay, judged on every stride-th tile (up to every PLANE_SAMPLE-th, at least
// two tiles of up to 32 K elements): a tensor whose low bytes are noise (most F32 weights) skips the full
// count, which costs a quarter of its encode. Conservative: a sample's Huffman lengths fit it better than the
// whole (savings read high), its tables use fewer bytes (cheaper), and one plane paying is enough.
constexpr uint32_t PLANE_SAMPLE = 8;
bool planes_may_pay(const uint32_t* w, const BlobInfo& b, const std::vector<uint8_t>& tile_table, int threads) {
  const uint32_t stride = std::min(PLANE_SAMPLE, b.n_tiles / 2);
  if (stride < 2) return true;  // too few tiles to sample: the full count decides
  std::vector<uint64_t> hist;
  plane_hists(w, b, tile_table, threads, hist, stride);
  int64_t saved[2] = {0, 0};
  uint8_t l[PLANE_SYMBOLS];
  for (uint32_t j = 0; j < b.n_tables; ++j) {
    for (int q = 0; q < 2; ++q) {
      const uint64_t* h = &hist[(size_t(j) * 2 + q) * PLANE_SYMBOLS];
      uint64_t n = 0, used = 0, bits = 0;
      for (size_t s = 0; s < PLANE_SYMBOLS; ++s) n += h[s], used += h[s] != 0;
      if (n == 0) continue;  // a table the sample missed
      std::fill_n(l, PLANE_SYMBOLS, 0);
      code_lengths(h, PLANE_SYMBOLS, PLANE_MAX_LEN, l);
      if (used > 1)
        for (size_t s = 0; s < PLANE_SYMBOLS; ++s) bits += h[s] * l[s];
      saved[q] += int64_t(stride) * (int64_t(8 * n) - int64_t(bits)) - int64_t(8 * plane_table_bytes(l));
    }
  }
  return saved[0] > 0 || saved[1] > 0;
}

// The planes to code (FORMAT.md §1.7) and their tables. With `planes` = -1, the count whose codes and tables are
// smallest against the 8 raw bits an element spends on each plane (0 when no plane pays); else that count.
void choose_planes(const std::vector<uint64_t>& hist, uint32_t n_tables, uint64_t numel, int planes, BlobInfo& b,
                   std::vector<uint8_t>& plane_lengths) {
  // lens[(table * 2 + plane) * 256 + byte] for plane 0 (bits 0..7) and 1 (bits 8..15); saved[plane] in bits
  std::vector<uint8_t> lens(size_t(n_tables) * 2 * PLANE_SYMBOLS, 0);
  int64_t saved[2] = {0, 0};
  for (uint32_t j = 0; j < n_tables; ++j) {
    for (int q = 0; q < 2; ++q) {
      const uint64_t* h = &hist[(size_t(j) * 2 + q) * PLANE_SYMBOLS];
      uint8_t* l = &lens[(size_t(j) * 2 + q) * PLANE_SYMBOLS];
      uint64_t n = 0, bits = 0, used = 0;
      for (size_t s = 0; s < PLANE_SYMBOLS; ++s) n += h[s], used += h[s] != 0;
      if (n == 0) {  // a table no tile names: cannot happen (every table names a tile), but stays valid
        l[0] = 1;
      } else {
        code_lengths(h, PLANE_SYMBOLS, PLANE_MAX_LEN, l);
      }
      // a constant plane (one byte value) takes 0 bits and stores no nibbles (FORMAT.md §1.7)
      if (used > 1)
        for (size_t s = 0; s < PLANE_SYMBOLS; ++s) bits += h[s] * l[s];
      saved[q] += int64_t(8 * n) - int64_t(bits) - int64_t(8 * plane_table_bytes(l));
    }
  }
  uint32_t p = 0;
  if (planes < 0) {
    if (saved[0] > 0) p = 1;
    if (saved[0] + saved[1] > std::max<int64_t>(saved[0], 0)) p = 2;
  } else {
    p = uint32_t(planes);
  }
  b.planes = numel ? p : 0;
  plane_lengths.assign(size_t(n_tables) * b.planes * PLANE_SYMBOLS, 0);
  uint32_t max_len = 0;
  for (uint32_t j = 0; j < n_tables; ++j) {
    for (uint32_t q = 0; q < b.planes; ++q) {  // lane order: the higher plane first
      const uint32_t plane = b.planes - 1 - q;
      const uint8_t* src = &lens[(size_t(j) * 2 + plane) * PLANE_SYMBOLS];
      std::copy_n(src, PLANE_SYMBOLS, &plane_lengths[(size_t(j) * b.planes + q) * PLANE_SYMBOLS]);
      if (std::count_if(src, src + PLANE_SYMBOLS, [](uint8_t x) { return x != 0; }) > 1)
        for (size_t s = 0; s < PLANE_SYMBOLS; ++s) max_len = std::max<uint32_t>(max_len, src[s]);
    }
  }
  b.plane_max_len = b.planes ? max_len : 0;
}

// The plane codes: (code << 5) | length, a constant plane's byte in 0 bits.
void plane_codes(const std::vector<uint8_t>& plane_lengths, std::vector<uint32_t>& enc) {
  enc.assign(plane_lengths.size(), 0);
  uint32_t pc[PLANE_SYMBOLS];
  for (size_t j = 0; j < plane_lengths.size() / PLANE_SYMBOLS; ++j) {
    const uint8_t* lens = &plane_lengths[j * PLANE_SYMBOLS];
    if (std::count_if(lens, lens + PLANE_SYMBOLS, [](uint8_t l) { return l != 0; }) == 1) continue;
    canonical_codes(lens, PLANE_SYMBOLS, pc);
    for (size_t s = 0; s < PLANE_SYMBOLS; ++s) enc[j * PLANE_SYMBOLS + s] = (pc[s] << 5) | lens[s];
  }
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
  // The used symbols of the widest split, then each narrower split's by merging neighbours (symbol >> 1):
  // work in proportion to the used symbols, not to the 2^12 bins.
  const int max_k = L.max_k();
  std::vector<uint32_t> sym;
  std::vector<uint64_t> cnt;
  for (size_t s = 0; s < hist.size(); ++s) {
    if (hist[s]) {
      sym.push_back(uint32_t(s));
      cnt.push_back(hist[s]);
    }
  }
  uint64_t best_bits = UINT64_MAX;
  int best_k = max_k;
  std::vector<uint8_t> lens, best_lens;
  std::vector<uint32_t> best_sym;
  for (int k = max_k; k >= 0; --k) {
    if (k < max_k) {  // merge neighbours: sym is sorted, so equal halves are adjacent
      size_t o = 0;
      for (size_t i = 0; i < sym.size(); ++i) {
        const uint32_t s = sym[i] >> 1;
        if (o && sym[o - 1] == s) {
          cnt[o - 1] += cnt[i];
        } else {
          sym[o] = s;
          cnt[o] = cnt[i];
          ++o;
        }
      }
      sym.resize(o);
      cnt.resize(o);
    }
    lens.resize(sym.size());
    code_lengths(cnt.data(), cnt.size(), max_code_len, lens.data());
    uint64_t coded = 0;
    for (size_t i = 0; i < sym.size(); ++i) coded += cnt[i] * lens[i];
    const size_t nsym = size_t(1) << (L.exp_bits + k);
    const uint64_t table = (nsym + 7) / 8 + (sym.size() + 1) / 2;
    const uint64_t bits = coded + n * uint64_t(L.man_bits - k + 1) + 8 * table;
    if (bits < best_bits) {
      best_bits = bits;
      best_k = k;
      best_lens = lens;
      best_sym = sym;
    }
  }
  lengths.assign(size_t(1) << (L.exp_bits + best_k), 0);
  for (size_t i = 0; i < best_sym.size(); ++i) lengths[best_sym[i]] = best_lens[i];
  return best_k;
}

Plan plan_v2(const void* words, const DtypeLayout& L, const uint64_t* shape, int ndim, uint32_t steps,
             int max_code_len, int threads, int max_tables, int planes) {
  if (planes > MAX_PLANES || (planes > 0 && L.code != 2)) throw std::invalid_argument("low planes are coded for F32 only, at most 2");
  if (max_tables <= 0 || max_tables > MAX_TABLES) max_tables = MAX_TABLES;
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
  derive_sizes(b);
  b.n_tiles = uint32_t((numel + b.tile_elems - 1) / b.tile_elems);
  derive_sizes(b);  // again: the last tile's sizes depend on n_tiles
  const size_t nsym = size_t(1) << b.sym_bits;
  if (b.n_tiles > 1 && max_tables > 1) {  // a code per group of tiles where that pays
    TileHists th;
    for (size_t s = 0; s < nsym; ++s)
      if (plan.lengths[s]) th.used.push_back(uint32_t(s));
    th.u = th.used.size();
    if (th.u > 1 && uint64_t(b.n_tiles) * th.u <= TILE_HIST_MAX) {
      by_width(L.itemsize(), [&](auto z) {
        using W = decltype(z);
        tile_hists_t(static_cast<const W*>(words), b, threads, th);
      });
      choose_tables(th, nsym, max_code_len, size_t(max_tables), threads, plan.lengths, plan.tile_table);
    }
  }
  b.n_tables = uint32_t(plan.lengths.size() / nsym);
  uint32_t max_len = 0;
  for (uint8_t l : plan.lengths) max_len = std::max<uint32_t>(max_len, l);
  b.max_code_len = max_len;
  // F32: code the low byte planes where they pay
  if (L.code == 2 && planes != 0 && numel && (planes > 0 || planes_may_pay(static_cast<const uint32_t*>(words), b,
                                                                           plan.tile_table, threads))) {
    std::vector<uint64_t> ph;
    plane_hists(static_cast<const uint32_t*>(words), b, plan.tile_table, threads, ph);
    choose_planes(ph, b.n_tables, numel, planes, b, plan.plane_lengths);
    derive_sizes(b);  // the raw field is 8 bits narrower per plane
    plane_codes(plan.plane_lengths, plan.plane_enc);
  }
  b.version = b.planes ? V3 : V2;
  std::vector<uint32_t> codes(nsym);
  plan.enc.resize(plan.lengths.size());
  for (uint32_t j = 0; j < b.n_tables; ++j) {
    const uint8_t* lens = &plan.lengths[j * nsym];
    canonical_codes(lens, nsym, codes.data());
    for (size_t s = 0; s < nsym; ++s) plan.enc[j * nsym + s] = (codes[s] << 5) | lens[s];
  }
  if (L.itemsize() == 2 && numel >= WORD_TABLE_MIN) {
    plan.word_table.resize(size_t(b.n_tables) << 16);
    const uint32_t shift = b.shift, smask = (1u << b.sym_bits) - 1, low = (1u << shift) - 1;
    // word = sign << 15 | symbol << shift | low bits: one entry pattern per (sign, symbol), its low bits in
    // a run (a loop the compiler vectorises; the tables of a multi-table tensor are built in parallel)
    parallel_for(b.n_tables, threads, [&](size_t j) {
      uint32_t* wt = plan.word_table.data() + (j << 16);
      for (uint32_t sign = 0; sign < 2; ++sign) {
        for (uint32_t sym = 0; sym <= smask; ++sym) {
          const uint32_t e = plan.enc[j * nsym + sym];
          const uint32_t base = ((e >> 5) << 16) | ((e & 31) << 11) | (sign << shift);
          uint32_t* o = wt + ((sign << 15) | (sym << shift));
          for (uint32_t lo = 0; lo <= low; ++lo) o[lo] = base | lo;
        }
      }
    });
  }
  plan.lane_bits.assign(size_t(b.n_tiles) * LANES, 0);
  plan.tile_codes.resize(b.n_tiles);
  plan.raw.assign(b.raw_words, 0);
  by_width(L.itemsize(), [&](auto z) {
    using W = decltype(z);
    const W* w = static_cast<const W*>(words);
    parallel_for(b.n_tiles, threads, [&](size_t t) {
      encode_tile_t(w, plan, uint32_t(t), &plan.lane_bits[t * LANES], plan.tile_codes[t], plan.raw.data());
    });
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
  b.tables_len = 0;
  for (uint32_t j = 0; j < b.n_tables; ++j) b.tables_len += table_bytes(&plan.lengths[j * nsym], nsym);
  for (size_t j = 0; j < plan.plane_lengths.size() / PLANE_SYMBOLS; ++j)
    b.tables_len += plane_table_bytes(&plan.plane_lengths[j * PLANE_SYMBOLS]);
  pos = align16(pos + b.tables_len);
  if (b.n_tables > 1) {
    b.tile_table_at = pos;
    pos = align16(pos + b.n_tiles);
  }
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
  out[4] = uint8_t(b.version);
  out[5] = 0;
  out[6] = uint8_t(b.layout->code);
  out[7] = uint8_t(b.ndim);
  out[8] = uint8_t(b.sym_bits);
  out[9] = uint8_t(b.shift);
  out[10] = uint8_t(b.max_code_len);
  out[11] = uint8_t(b.n_tables);
  out[12] = uint8_t(b.lane_map);
  out[13] = uint8_t(b.planes);
  out[14] = uint8_t(b.plane_max_len);
  wr32(out + 16, b.steps);
  wr32(out + 20, b.n_tiles);
  wr64(out + 24, b.numel);
  wr64(out + 32, b.code_words);
  wr32(out + 48, b.data_crc);
  for (int i = 0; i < b.ndim; ++i) wr64(out + HEADER_FIXED + 8 * i, b.shape[i]);
  // tables, one after another: used-symbol bitmap (MSB-first within a byte), then (length - 1) per used
  // symbol in nibbles
  const size_t nsym = size_t(1) << b.sym_bits;
  uint8_t* bm = out + b.tables_at;
  // a constant plane table (one used byte) stores its bitmap only
  auto put_table = [&](const uint8_t* lens, size_t count, bool plane) {
    uint8_t* nib = bm + (count + 7) / 8;
    const bool constant = plane && std::count_if(lens, lens + count, [](uint8_t l) { return l != 0; }) == 1;
    size_t i = 0;
    for (size_t s = 0; s < count; ++s) {
      uint32_t l = lens[s];
      if (!l) continue;
      bm[s >> 3] |= uint8_t(0x80 >> (s & 7));
      if (!constant) nib[i >> 1] |= uint8_t((l - 1) << (4 * (i & 1)));
      ++i;
    }
    bm = nib + (constant ? 0 : (i + 1) / 2);
  };
  for (uint32_t j = 0; j < b.n_tables; ++j) put_table(&plan.lengths[j * nsym], nsym, false);
  for (size_t j = 0; j < plan.plane_lengths.size() / PLANE_SYMBOLS; ++j)
    put_table(&plan.plane_lengths[j * PLANE_SYMBOLS], PLANE_SYMBOLS, true);
  if (b.n_tables > 1) std::memcpy(out + b.tile_table_at, plan.tile_table.data(), b.n_tiles);
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
  uint8_t* codes = out + b.codes_at;
  parallel_for(b.n_tiles, plan.threads, [&](size_t t) {
    const std::vector<uint32_t>& tc = plan.tile_codes[t];
    if (!tc.empty()) std::memcpy(codes + 4 * size_t(plan.tile_words[t]), tc.data(), 4 * tc.size());
  });
  if (b.raw_words) std::memcpy(out + b.raw_at, plan.raw.data(), 4 * b.raw_words);
  (void)words;
  wr32(out + 52, crc32c_parallel(0, out, b.total, plan.threads));
}

}  // namespace fz
