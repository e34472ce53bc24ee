// The v2 encoder: symbol split, code, and the tile × lane layout of docs/FORMAT.md §1, in two passes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/blob.h"

namespace fz {

// What the first pass decided: the header, the code, every lane's length. write_v2 then fills a buffer of
// info.total bytes.
struct Plan {
  BlobInfo info;
  std::vector<uint8_t> lengths;    // code length per symbol (0 = unused)
  std::vector<uint32_t> enc;       // (code << 5) | length per symbol
  std::vector<uint32_t> lane_bits; // n_tiles * 32
  std::vector<uint32_t> tile_words;  // n_tiles + 1
  std::vector<uint32_t> tile_lanes;  // n_tiles: base | width << 27
  std::vector<uint64_t> delta_at;    // n_tiles: first word of each tile's lane deltas
  int threads = 1;
};

// words: numel unsigned integers of the dtype's width (the tensor's bits, row-major).
Plan plan_v2(const void* words, const DtypeLayout& layout, const uint64_t* shape, int ndim, uint32_t steps,
             int max_code_len, int threads);
void write_v2(const Plan& plan, const void* words, uint8_t* out);

// The widest-split symbol histogram (exponent and max_k mantissa bits), and the data CRC, in one pass.
void histogram(const void* words, uint64_t n, const DtypeLayout& layout, int threads, std::vector<uint64_t>& hist,
               uint32_t& crc);

// The split (mantissa bits joined to the exponent) giving the smallest blob, and its code lengths.
int choose_split(const std::vector<uint64_t>& hist, const DtypeLayout& layout, uint64_t n, int max_code_len,
                 std::vector<uint8_t>& lengths);

}  // namespace fz
