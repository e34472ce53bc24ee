// Length-limited prefix codes: optimal lengths (Huffman, or package-merge where Huffman's exceed the limit),
// canonical codes from lengths, and the decode tables of fz_lane.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "fz_lane.h"

namespace fz {

// Optimal code lengths, each at most max_len, for `counts` (0 = unused symbol). One used symbol gets length 1.
void code_lengths(const uint64_t* counts, size_t nsym, int max_len, uint8_t* out);

// The canonical code of each used symbol (ordered by length, then symbol value; DEFLATE's rule).
void canonical_codes(const uint8_t* lengths, size_t nsym, uint32_t* codes);

// Decode tables for one code: the primary table (entries as fz_lane.h defines them), and the long codes.
struct Tables {
  std::vector<uint32_t> primary;       // 1 << PRIMARY_BITS entries
  LongCodes longc;
  std::vector<uint32_t> long_pattern;  // patterns of the codes longer than PRIMARY_BITS, in canonical order
};
// `pattern_of(s)` for the dtype: the symbol's bits in place (see fz_lane.h); lengths must be a prefix code.
Tables build_tables(const uint8_t* lengths, size_t nsym, uint32_t shift, int bits);

// The decode table of a low plane's code (lengths of 256 byte values, each at most PLANE_MAX_LEN): 4096
// entries (byte << 8) | length over the next 12 bits, 0 where no code starts (fz_lane.h's Code::planes). A
// table of one used byte codes it in 0 bits (every entry: that byte, length 0).
std::vector<uint16_t> build_plane_table(const uint8_t* lengths);

}  // namespace fz
