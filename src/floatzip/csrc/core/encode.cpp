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
  const uint32_t sign_shift = uint32_t(sizeof(W) * 8 - 1), low_mask = (1u << shift) - 1;
  const size_t table = plan.tile_table.empty() ? 0 : plan.tile_table[t];
  const uint32_t* enc = plan.enc.data() + (table << b.sym_bits);
  const uint64_t m = b.tile_elements(t);
  const uint64_t full = m / (uint64_t(LANES) * group), tail = m - full * LANES * group;
  const W* x = w + uint64_t(t) * b.tile_elems;
  // each lane's scratch holds at most 16 bits per symbol, plus a word for the branch-free store
  const uint64_t lane_cap = (16 * (full + 1) * group + 31) / 32 + 2;
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
  auto field = [&](W word) -> uint32_t { return (uint32_t(word >> sign_shift) << shift) | (uint32_t(word) & low_mask); };
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
    for (uint32_t v = 0; v < group; v += 2) {
      const uint32_t e1 = enc[(y[v] >> shift) & mask], e2 = enc[(y[v + 1] >> shift) & mask];
      const uint32_t l2 = e2 & 31;
      wr.put(((e1 >> 5) << l2) | (e2 >> 5), (e1 & 31) + l2);
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
      for (uint64_t v = 0; v < extra; ++v) {
        const uint32_t e = enc[(y[v] >> shift) & mask];
        bw[c].put(e >> 5, e & 31);
      }
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


// Per-tile symbol counts at the chosen split, each tile's used symbols as (symbol, count) pairs.
struct TileHist {
  std::vector<uint32_t> sym, cnt;
  double mean = 0;  // mean symbol: the tiles' first ordering (the exponent follows the rows' scale)
};

template <typename W>
void tile_hists_t(const W* w, const BlobInfo& b, int threads, std::vector<TileHist>& out) {
  const uint32_t shift = b.shift, mask = (1u << b.sym_bits) - 1;
  out.assign(b.n_tiles, TileHist());
  parallel_for(b.n_tiles, threads, [&](size_t t) {
    std::vector<uint32_t> h(size_t(mask) + 1, 0);
    const W* x = w + uint64_t(t) * b.tile_elems;
    const uint64_t m = b.tile_elements(uint32_t(t));
    for (uint64_t i = 0; i < m; ++i) h[(x[i] >> shift) & mask]++;
    TileHist& th = out[t];
    double sum = 0;
    for (uint32_t s = 0; s <= mask; ++s) {
      if (!h[s]) continue;
      th.sym.push_back(s);
      th.cnt.push_back(h[s]);
      sum += double(s) * h[s];
    }
    th.mean = m ? sum / double(m) : 0;
  });
}

// Code bits of a tile under a table's lengths; UINT64_MAX when the table lacks one of its symbols.
uint64_t tile_cost(const TileHist& th, const uint8_t* lens) {
  uint64_t bits = 0;
  for (size_t i = 0; i < th.sym.size(); ++i) {
    const uint32_t l = lens[th.sym[i]];
    if (!l) return UINT64_MAX;
    bits += uint64_t(th.cnt[i]) * l;
  }
  return bits;
}

// Optimal lengths of each table for the tiles assigned to it; tables left without a tile are dropped and
// the assignment renumbered. Returns the table count.
size_t cluster_lengths(const std::vector<TileHist>& th, std::vector<uint8_t>& assign, size_t k, size_t nsym,
                       int max_code_len, std::vector<uint8_t>& lengths) {
  std::vector<uint64_t> pooled(k * nsym, 0);
  std::vector<size_t> tiles(k, 0);
  for (size_t t = 0; t < th.size(); ++t) {
    uint64_t* h = &pooled[assign[t] * nsym];
    tiles[assign[t]]++;
    for (size_t i = 0; i < th[t].sym.size(); ++i) h[th[t].sym[i]] += th[t].cnt[i];
  }
  std::vector<uint8_t> renum(k, 0);
  size_t used = 0;
  for (size_t j = 0; j < k; ++j) {
    if (tiles[j]) renum[j] = uint8_t(used++);
  }
  lengths.assign(used * nsym, 0);
  for (size_t j = 0; j < k; ++j) {
    if (tiles[j]) code_lengths(&pooled[j * nsym], nsym, max_code_len, &lengths[renum[j] * nsym]);
  }
  for (uint8_t& a : assign) a = renum[a];
  return used;
}

// Up to MAX_TABLES codes per tensor, one named per tile (FORMAT.md §1.2), where they make the blob smaller:
// for each table count, tiles start in groups of equal size by mean symbol and move to the table that codes
// them in the fewest bits (Lloyd's iteration on real code lengths) until none moves. The cost counted is the
// codes, the tables and the tile_table section. Serial and deterministic (the same blob for any thread count).
void choose_tables(const std::vector<TileHist>& th, size_t nsym, int max_code_len, std::vector<uint8_t>& lengths,
                   std::vector<uint8_t>& tile_table) {
  const size_t n = th.size();
  auto total = [&](const std::vector<uint8_t>& assign, const std::vector<uint8_t>& lens, size_t k) {
    uint64_t bits = 0;
    for (size_t t = 0; t < n; ++t) bits += tile_cost(th[t], &lens[assign[t] * nsym]);
    for (size_t j = 0; j < k; ++j) bits += 8 * table_bytes(&lens[j * nsym], nsym);
    if (k > 1) bits += 8 * (n + 15);  // the tile_table section, aligned
    return bits;
  };
  std::vector<uint8_t> one(n, 0);  // `lengths` comes in as the whole tensor's code
  tile_table.clear();
  uint64_t best = total(one, lengths, 1);
  std::vector<size_t> order(n);
  for (size_t t = 0; t < n; ++t) order[t] = t;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t c) { return th[a].mean < th[c].mean; });
  for (size_t k0 : {size_t(2), size_t(3), size_t(4), size_t(6), size_t(8), size_t(12), size_t(16)}) {
    if (k0 > n || k0 > size_t(MAX_TABLES)) break;
    std::vector<uint8_t> assign(n);
    for (size_t i = 0; i < n; ++i) assign[order[i]] = uint8_t(i * k0 / n);
    std::vector<uint8_t> lens;
    size_t k = cluster_lengths(th, assign, k0, nsym, max_code_len, lens);
    for (int iter = 0; iter < 12; ++iter) {
      bool moved = false;
      for (size_t t = 0; t < n; ++t) {
        uint64_t c0 = tile_cost(th[t], &lens[assign[t] * nsym]);
        for (size_t j = 0; j < k; ++j) {
          const uint64_t c = tile_cost(th[t], &lens[j * nsym]);
          if (c < c0) {
            c0 = c;
            assign[t] = uint8_t(j);
            moved = true;
          }
        }
      }
      if (!moved) break;
      k = cluster_lengths(th, assign, k, nsym, max_code_len, lens);
    }
    const uint64_t bits = total(assign, lens, k);
    if (k > 1 && bits < best) {
      best = bits;
      lengths = lens;
      tile_table = assign;
    }
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
  derive_sizes(b);
  b.n_tiles = uint32_t((numel + b.tile_elems - 1) / b.tile_elems);
  derive_sizes(b);  // again: the last tile's sizes depend on n_tiles
  const size_t nsym = size_t(1) << b.sym_bits;
  if (b.n_tiles > 1) {  // a code per group of tiles where that pays
    std::vector<TileHist> th;
    by_width(L.itemsize(), [&](auto z) {
      using W = decltype(z);
      tile_hists_t(static_cast<const W*>(words), b, threads, th);
    });
    choose_tables(th, nsym, max_code_len, plan.lengths, plan.tile_table);
  }
  b.n_tables = uint32_t(plan.lengths.size() / nsym);
  uint32_t max_len = 0;
  for (uint8_t l : plan.lengths) max_len = std::max<uint32_t>(max_len, l);
  b.max_code_len = max_len;
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
    for (uint32_t j = 0; j < b.n_tables; ++j) {
      for (uint32_t word = 0; word < (1u << 16); ++word) {
        const uint32_t e = plan.enc[j * nsym + ((word >> shift) & smask)];
        const uint32_t f = ((word >> 15) << shift) | (word & low);
        plan.word_table[(size_t(j) << 16) + word] = ((e >> 5) << 16) | ((e & 31) << 11) | f;
      }
    }
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
  // tables, one after another: used-symbol bitmap (MSB-first within a byte), then (length - 1) per used
  // symbol in nibbles
  const size_t nsym = size_t(1) << b.sym_bits;
  uint8_t* bm = out + b.tables_at;
  for (uint32_t j = 0; j < b.n_tables; ++j) {
    const uint8_t* lens = &plan.lengths[j * nsym];
    uint8_t* nib = bm + (nsym + 7) / 8;
    size_t i = 0;
    for (size_t s = 0; s < nsym; ++s) {
      uint32_t l = lens[s];
      if (!l) continue;
      bm[s >> 3] |= uint8_t(0x80 >> (s & 7));
      nib[i >> 1] |= uint8_t((l - 1) << (4 * (i & 1)));
      ++i;
    }
    bm = nib + (i + 1) / 2;
  }
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
