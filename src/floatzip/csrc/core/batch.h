#pragma once

#include <cstddef>
#include <cstdint>

#include "fz_batch.h"

namespace fz {

// The arrays of one launch of the decode kernel (see fz_decode.cu for their meaning).
struct BatchArrays {
  const JobDesc* jobs;
  const TileDesc* tiles;
  const u32* codes;
  u64 last_code_word;
  const u32* raw;
  const u32* deltas;
  const u32* primaries;
  const LongCodes* longcs;
  const u32* long_patterns;
  const u64* long_at;
  u8* out;
  u32* errors;
};

// Element counts of the arrays (jobs, tiles, words of codes / raw / deltas / long patterns, codes, output bytes).
struct BatchSizes {
  size_t jobs, tiles, codes, raw, deltas, long_patterns, codes_tables, out_bytes;
  size_t primary_slots;  // 4096-word slots of `primaries`: the codes' tables, then the plane tables
};

// Throws std::invalid_argument unless every index the kernel reads by is in range (for kernel width `bits`
// and, for F32, `planes` coded low planes: every tile of the launch must have exactly that many).
void validate_batch(const BatchArrays& a, const BatchSizes& n, int bits, uint32_t planes = 0);

// What decode_kernel<bits, r, long_codes> does to these arrays, on the CPU.
void decode_batch_host(const BatchArrays& a, size_t n_jobs, int bits, uint32_t r, bool long_codes, int threads);

}  // namespace fz
