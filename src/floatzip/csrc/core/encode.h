// The v2 encoder: symbol split, code, and the tile × lane layout of docs/FORMAT.md §1, in two passes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/blob.h"

namespace fz {

// The encoded tensor before it is laid out: header, code, every tile's code words and the raw stream (the
// one pass over the tensor after the histogram). write_v2 then fills a buffer of info.total bytes.
struct Plan {
  BlobInfo info;
  std::vector<uint8_t> lengths;    // code length per symbol of each table, n_tables * 2^sym_bits (0 = unused)
  std::vector<uint32_t> enc;       // (code << 5) | length per symbol of each table, same order
  std::vector<uint8_t> plane_lengths;  // v3: n_tables * planes * 256 (BlobInfo's order)
  std::vector<uint32_t> plane_enc;     // (code << 5) | length, same order
  std::vector<uint8_t> tile_table; // the table of each tile; empty with one table
  std::vector<uint32_t> lane_bits; // n_tiles * 32
  std::vector<uint32_t> tile_words;  // n_tiles + 1
  std::vector<uint32_t> tile_lanes;  // n_tiles: base | width << 27
  std::vector<uint64_t> delta_at;    // n_tiles: first word of each tile's lane deltas
  std::vector<std::vector<uint32_t>> tile_codes;  // each tile's code words, ready to copy into place
  std::vector<uint32_t> raw;                      // the raw stream (padding excluded)
  // large 16-bit tensors: for every 16-bit word, (code << 16) | (length << 11) | raw field (codes are at
  // most 16 bits, lengths 5, fields 11)
  std::vector<uint32_t> word_table;  // 2^16 entries per table
  int threads = 1;
};

// words: numel unsigned integers of the dtype's width (the tensor's bits, row-major). max_tables: at most
// this many code tables (1: one code for the whole tensor; 0 or above MAX_TABLES: up to MAX_TABLES, where
// they make the blob smaller). planes (F32 only): the low byte planes to code (FORMAT.md §1.7): -1 lets the
// encoder choose 0, 1 or 2 by coded size, 0..2 forces that many (a version 3 blob when above 0).
Plan plan_v2(const void* words, const DtypeLayout& layout, const uint64_t* shape, int ndim, uint32_t steps,
             int max_code_len, int threads, int max_tables = 0, int planes = -1);
void write_v2(const Plan& plan, const void* words, uint8_t* out);

// The widest-split symbol histogram (exponent and max_k mantissa bits), and the data CRC, in one pass.
void histogram(const void* words, uint64_t n, const DtypeLayout& layout, int threads, std::vector<uint64_t>& hist,
               uint32_t& crc);

// The split (mantissa bits joined to the exponent) giving the smallest blob, and its code lengths.
int choose_split(const std::vector<uint64_t>& hist, const DtypeLayout& layout, uint64_t n, int max_code_len,
                 std::vector<uint8_t>& lengths);

}  // namespace fz
