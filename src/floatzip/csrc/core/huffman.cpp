#include "core/huffman.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

namespace fz {

namespace {

// Package-merge (Larmore & Hirschberg): optimal lengths of at most max_len bits for weights sorted ascending.
void package_merge(const std::vector<uint64_t>& w, int max_len, std::vector<int>& depth) {
  const size_t n = w.size();
  const size_t width = 2 * n;
  std::vector<uint64_t> cur(w.begin(), w.end()), nxt(width);
  cur.resize(width);
  std::vector<std::vector<bool>> is_leaf(max_len, std::vector<bool>(width, false));
  size_t size = n;
  for (size_t i = 0; i < n; ++i) is_leaf[0][i] = true;
  for (int level = 1; level < max_len; ++level) {
    size_t npairs = size / 2, a = 0, b = 0, o = 0;
    while (a < n || b < npairs) {
      if (b >= npairs || (a < n && w[a] <= cur[2 * b] + cur[2 * b + 1])) {
        nxt[o] = w[a++];
        is_leaf[level][o] = true;
      } else {
        nxt[o] = cur[2 * b] + cur[2 * b + 1];
        ++b;
      }
      ++o;
    }
    size = o;
    std::swap(cur, nxt);
  }
  depth.assign(n, 0);
  size_t take = 2 * n - 2;
  for (int level = max_len - 1; level >= 0; --level) {
    size_t taken = 0;
    for (size_t i = 0; i < std::min(take, width); ++i) taken += is_leaf[level][i];
    for (size_t i = 0; i < taken; ++i) depth[i] += 1;
    take = 2 * (take - taken);
  }
}

}  // namespace

void code_lengths(const uint64_t* counts, size_t nsym, int max_len, uint8_t* out) {
  std::fill(out, out + nsym, 0);
  std::vector<uint32_t> used;
  used.reserve(nsym);
  for (size_t s = 0; s < nsym; ++s)
    if (counts[s]) used.push_back(uint32_t(s));
  const size_t n = used.size();
  if (n == 0) return;
  if (n == 1) {
    out[used[0]] = 1;
    return;
  }
  std::stable_sort(used.begin(), used.end(), [&](uint32_t a, uint32_t b) { return counts[a] < counts[b]; });
  std::vector<uint64_t> w(n);
  for (size_t i = 0; i < n; ++i) w[i] = counts[used[i]];
  // Huffman by two queues (leaves sorted, internal nodes made in non-decreasing order): node i < n is a leaf,
  // n + k the k-th internal node; a leaf wins ties, which keeps the tree shallow.
  std::vector<uint64_t> iw(n - 1);
  std::vector<uint32_t> parent(2 * n - 1);
  size_t li = 0, ni = 0;
  auto pick = [&](size_t made) -> size_t {
    if (li < n && (ni >= made || w[li] <= iw[ni])) return li++;
    return n + ni++;
  };
  for (size_t k = 0; k + 1 < n; ++k) {
    size_t a = pick(k), b = pick(k);
    iw[k] = (a < n ? w[a] : iw[a - n]) + (b < n ? w[b] : iw[b - n]);
    parent[a] = parent[b] = uint32_t(n + k);
  }
  std::vector<int> depth(2 * n - 1, 0);
  int longest = 0;
  for (size_t id = 2 * n - 2; id-- > 0;) {
    depth[id] = depth[parent[id]] + 1;
    if (id < n && depth[id] > longest) longest = depth[id];
  }
  if (longest <= max_len) {
    for (size_t i = 0; i < n; ++i) out[used[i]] = uint8_t(depth[i]);
    return;
  }
  std::vector<int> pm;
  package_merge(w, max_len, pm);
  for (size_t i = 0; i < n; ++i) out[used[i]] = uint8_t(pm[i]);
}

void canonical_codes(const uint8_t* lengths, size_t nsym, uint32_t* codes) {
  uint32_t count[MAX_CODE_LEN + 2] = {0};
  for (size_t s = 0; s < nsym; ++s) count[lengths[s]]++;
  count[0] = 0;
  uint32_t next[MAX_CODE_LEN + 2] = {0};
  uint32_t code = 0;
  for (int l = 1; l <= MAX_CODE_LEN; ++l) {
    code = (code + count[l - 1]) << 1;
    next[l] = code;
  }
  // DEFLATE: next[1] = 0 (the loop above starts from code 0 shifted once, with count[0] = 0)
  for (size_t s = 0; s < nsym; ++s) {
    uint32_t l = lengths[s];
    codes[s] = l ? next[l]++ : 0;
  }
}

Tables build_tables(const uint8_t* lengths, size_t nsym, uint32_t shift, int bits) {
  Tables tb;
  tb.primary.assign(size_t(1) << PRIMARY_BITS, ENTRY_LONG);
  std::vector<uint32_t> codes(nsym);
  canonical_codes(lengths, nsym, codes.data());
  auto pattern = [&](size_t s) -> uint32_t {
    uint32_t p = uint32_t(s) << shift;
    return bits == 32 ? p >> 16 : p;
  };
  uint32_t count[MAX_CODE_LEN + 1] = {0};
  uint32_t max_len = 0;
  for (size_t s = 0; s < nsym; ++s) {
    uint32_t l = lengths[s];
    if (!l) continue;
    count[l]++;
    max_len = std::max(max_len, l);
    if (l <= PRIMARY_BITS) {
      uint32_t first = codes[s] << (PRIMARY_BITS - l), span = 1u << (PRIMARY_BITS - l);
      uint32_t e = (pattern(s) << 16) | l;
      for (uint32_t i = 0; i < span; ++i) tb.primary[first + i] = e;
    }
  }
  LongCodes& lc = tb.longc;
  lc.max_len = max_len;
  uint32_t code = 0, first_code[MAX_CODE_LEN + 1] = {0};
  for (int l = 1; l <= MAX_CODE_LEN; ++l) {
    code = (code + (l > 1 ? count[l - 1] : 0)) << (l > 1 ? 1 : 0);
    first_code[l] = code;
    lc.limit[l] = (code + count[l]) << (16 - l);
  }
  lc.limit[0] = 0;
  lc.offset[0] = 0;
  int64_t before = 0;  // long codes of shorter lengths
  for (int l = 1; l <= MAX_CODE_LEN; ++l) {
    lc.offset[l] = l > PRIMARY_BITS ? before - int64_t(first_code[l]) : 0;
    if (l > PRIMARY_BITS) before += count[l];
  }
  tb.long_pattern.assign(size_t(before) + 1, 0);
  if (max_len > PRIMARY_BITS) {
    for (size_t s = 0; s < nsym; ++s) {
      const uint32_t l = lengths[s];
      if (l > PRIMARY_BITS) tb.long_pattern[size_t(lc.offset[l] + codes[s])] = pattern(s);
    }
  }
  return tb;
}

std::vector<uint16_t> build_plane_table(const uint8_t* lengths) {
  std::vector<uint16_t> t(size_t(1) << PRIMARY_BITS, 0);
  size_t used = 0, only = 0;
  for (size_t s = 0; s < 256; ++s)
    if (lengths[s]) ++used, only = s;
  if (used == 1) {  // a constant plane: its byte in 0 bits (FORMAT.md §1.7)
    std::fill(t.begin(), t.end(), uint16_t(only << 8));
    return t;
  }
  uint32_t codes[256];
  canonical_codes(lengths, 256, codes);
  for (uint32_t s = 0; s < 256; ++s) {
    const uint32_t l = lengths[s];
    if (!l) continue;
    if (l > uint32_t(PLANE_MAX_LEN)) throw std::logic_error("a plane code is longer than PLANE_MAX_LEN");
    const uint32_t first = codes[s] << (PRIMARY_BITS - l), span = 1u << (PRIMARY_BITS - l);
    for (uint32_t i = 0; i < span; ++i) t[first + i] = uint16_t((s << 8) | l);
  }
  return t;
}

}  // namespace fz
