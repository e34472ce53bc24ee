#pragma once

#include <cstdint>

#include "fz_lane.h"

namespace fz {

// One full tile of a 16-bit dtype: every lane decodes `steps` steps (a multiple of 4), no tail.
struct Tile16 {
  const u32* codes;  // the blob's code stream; 16 bits per symbol past every lane's start are readable
  const u64* start;  // 32 lane start bits
  const u64* end;    // 32 lane end bits
  const u32* raw;    // the tile's raw words (lane-interleaved)
  u64 steps;
  const Code* code;
  u16* out;     // the tile's first element
  bool vector;  // assemble the words with AVX-512 when the CPU has it (else portable C++)
};

bool avx512_available();
// The fast path's own code needs BMI2 on x86-64 (it is compiled for it).
bool fast_path_available();
// Decodes the tile; false when a lane does not end at its end bit (or r has no fast path).
bool decode_tile16_fast(const Tile16& t, bool long_codes, u32 r);

}  // namespace fz
