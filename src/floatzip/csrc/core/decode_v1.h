#pragma once

#include <cstddef>
#include <cstdint>

#include "core/blob.h"

namespace fz {

// The sections of a parsed v1 blob (docs/FORMAT.md, version 1, §1.3–1.5).
struct V1Streams {
  const uint32_t* codes;  // W + 1 words
  uint64_t n_codes;
  const uint32_t* raw;  // ceil(n r / 32) + 1 words
  uint64_t n_raw;
  const uint32_t* tile_words;
  uint64_t n_tile_words;
  const uint16_t* lane_bits;
  uint64_t n_lane_bits;
  uint64_t numel;
  uint32_t lanes, steps, shift, sym_bits;
  int bits;
};

// Decode into `out` (numel words of `bits` bits); raises IntegrityError on a stream that does not decode.
void decode_v1(const V1Streams& s, const uint8_t* lengths, void* out, int threads);

}  // namespace fz
