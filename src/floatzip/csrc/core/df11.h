#pragma once

#include <cstddef>
#include <cstdint>

namespace fz {

// The arrays of one DF11 block's decode pass (see floatzip/convert/_df11_decode.py for their meaning).
struct Df11Args {
  const uint8_t* stream;  // encoded_exponent, then 8 zero bytes
  uint64_t stream_len;    // bytes, padding included
  uint64_t n_bits;        // bits of the stream proper
  const int64_t* gaps;    // n_windows values, each 0..31
  uint64_t n_windows;
  uint64_t window_bits;
  uint32_t tpb;             // windows per decode block
  const uint8_t* luts;      // n_tables x 256 decode tables
  uint32_t n_tables;
  const uint8_t* lens;      // 256 code lengths by exponent value
  int link_min;             // entries >= link_min are links to table 256 - entry
  const int64_t* positions; // n_positions: each decode block's first weight, then the weight count
  uint64_t n_positions;
  const uint8_t* sign_mantissa;  // n bytes
  uint16_t* out;                 // n words
  uint64_t n;
  int64_t* firsts;      // per window
  int64_t* ends;        // per window
  int64_t* bad;         // per window
  int64_t* block_ends;  // per decode block
  int threads;
};

// Throws std::invalid_argument for sizes that do not hold together; otherwise fills the outputs.
void df11_decode(const Df11Args& a);

}  // namespace fz
