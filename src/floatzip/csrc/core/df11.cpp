// The decode pass of a DFloat11 (DF11) block, for floatzip.convert._df11_decode (which checks the tables and
// the sizes, and every result of this pass, before it uses the output). Everything here is bounded by the
// arrays' own sizes: no value read from the file becomes an index unchecked.
#include "core/df11.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "core/pool.h"

namespace fz {

namespace {

// (exponent, code length) of the code starting at bit pos, or (-1, 0) when none does. The stream has at least
// 5 bytes after byte pos >> 3 (the caller keeps pos below n_bits and pads the stream by 8 bytes).
inline void decode_at(const uint8_t* s, uint64_t pos, const uint8_t* luts, const uint8_t* lens, uint32_t n_tables,
                      int link_min, int& sym, int& length) {
  const uint64_t b = pos >> 3;
  uint64_t v = (uint64_t(s[b]) << 32) | (uint64_t(s[b + 1]) << 24) | (uint64_t(s[b + 2]) << 16) |
               (uint64_t(s[b + 3]) << 8) | uint64_t(s[b + 4]);
  v = (v >> (8 - (pos & 7))) & 0xFFFFFFFFu;
  uint32_t table = 0;
  for (int level = 0; level < 4; ++level) {
    const int e = luts[size_t(table) * 256 + ((v >> (24 - 8 * level)) & 0xFF)];
    if (e >= link_min) {
      const uint32_t nxt = uint32_t(256 - e);
      if (nxt <= table || nxt >= n_tables) break;  // links lead only to later tables that exist
      table = nxt;
      continue;
    }
    const int l = lens[e];
    if (l == 0 || (l - 1) >> 3 != level) break;  // an unused value, or a code that ends in another byte
    sym = e;
    length = l;
    return;
  }
  sym = -1;
  length = 0;
}

}  // namespace

void df11_decode(const Df11Args& a) {
  // sizes: the caller's arrays, checked here too (a wrong size from Python would otherwise be an overflow)
  if (a.window_bits < 32 || a.window_bits > (uint64_t(1) << 24) || a.tpb < 1 || a.tpb > (1u << 20))
    throw std::invalid_argument("unsupported DF11 layout");
  if (a.n_tables < 1 || a.n_tables > 256 || a.link_min < 1 || a.link_min > 256)
    throw std::invalid_argument("bad DF11 tables");
  if (a.stream_len < 8 || a.n_bits > 8 * (a.stream_len - 8)) throw std::invalid_argument("the stream is not padded");
  if (a.n_windows > (uint64_t(1) << 40) / a.window_bits) throw std::invalid_argument("too many DF11 windows");
  if (a.n_positions < 1) throw std::invalid_argument("no output positions");
  const uint64_t n_blocks = a.n_positions - 1;
  for (uint64_t w = 0; w < a.n_windows; ++w)
    if (a.gaps[w] < 0 || a.gaps[w] >= 32) throw std::invalid_argument("a DF11 gap is out of range");
  parallel_for(n_blocks, a.threads, [&](size_t blk) {
    int64_t i = a.positions[blk];
    const uint64_t w0 = uint64_t(blk) * a.tpb;
    const uint64_t w1 = std::min<uint64_t>(w0 + a.tpb, a.n_windows);
    for (uint64_t w = w0; w < w1; ++w) {
      const uint64_t base = w * a.window_bits;
      uint64_t pos = base + uint64_t(a.gaps[w]);
      const uint64_t stop = std::min(base + a.window_bits, a.n_bits);
      a.firsts[w] = i;
      a.bad[w] = -1;
      while (pos < stop) {
        int sym, length;
        decode_at(a.stream, pos, a.luts, a.lens, a.n_tables, a.link_min, sym, length);
        if (sym < 0) {
          a.bad[w] = i;  // past the last weight this is the stream's padding, and harmless
          break;
        }
        if (i >= 0 && uint64_t(i) < a.n) {
          const uint32_t sm = a.sign_mantissa[i];
          a.out[i] = uint16_t(((sm & 0x80u) << 8) | (uint32_t(sym) << 7) | (sm & 0x7Fu));
        }
        pos += uint64_t(length);
        ++i;
      }
      a.ends[w] = int64_t(pos);
    }
    a.block_ends[blk] = i;
  });
}

}  // namespace fz
