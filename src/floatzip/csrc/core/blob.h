// The floatzip v2 tensor record ("blob"): its header, the offsets of its sections, and the one validating
// parser every reader goes through (docs/FORMAT.md §1 is the authority on the bytes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "fz_lane.h"

namespace fz {

// A blob that does not follow the format (sizes, offsets, tables), or is corrupt (checksums, streams).
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct IntegrityError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct DtypeLayout {
  int code;
  int bits;
  int exp_bits;
  int man_bits;
  int max_k() const { return man_bits < 12 - exp_bits ? man_bits : 12 - exp_bits; }
  int itemsize() const { return bits / 8; }
};
const DtypeLayout* layout_for_code(int code);  // nullptr for an unknown code

constexpr uint32_t BLOB_MAGIC = 0x6E745A46u;  // "FZtn" little-endian
constexpr int V2 = 2;
constexpr int V3 = 3;  // version 2 plus F32's coded low byte planes (FORMAT.md §1.7)
constexpr size_t PLANE_SYMBOLS = 256;
constexpr size_t HEADER_FIXED = 56;
constexpr int MAX_NDIM = 8;
constexpr int MAX_TABLES = 16;
constexpr uint32_t MAX_STEPS = 8192;
constexpr uint32_t BASE_BITS = 27;  // tile_lanes: lane base length in the low 27 bits, delta width above

// Everything a decoder needs to know about a v2 or v3 blob, every field checked.
struct BlobInfo {
  int version = V2;
  const DtypeLayout* layout = nullptr;
  int ndim = 0;
  uint64_t shape[MAX_NDIM] = {};
  uint32_t sym_bits = 0, shift = 0, max_code_len = 0, n_tables = 0, lane_map = 0;
  uint32_t steps = 0, n_tiles = 0;
  uint64_t numel = 0, code_words = 0;
  uint32_t data_crc = 0, blob_crc = 0;
  uint32_t planes = 0;         // coded low byte planes (v3, F32: 1 or 2; else 0)
  uint32_t plane_max_len = 0;  // the longest code of any plane table (0 without planes)

  // derived sizes
  uint32_t group = 0;         // elements per lane per step (16 bytes of output)
  uint64_t tile_elems = 0;    // 32 * steps * group
  uint32_t raw_bits = 0;      // shift + 1 - 8 planes
  uint64_t full_tile_raw = 0; // raw words of a full tile
  uint64_t last_full_steps = 0, last_tail = 0;  // the last tile: full steps, and elements after them
  uint64_t last_lane_raw = 0; // raw words per lane of the last tile's full steps
  uint64_t raw_words = 0;     // raw stream words, padding excluded

  // section offsets (bytes from the blob's start) and sizes
  size_t tables_at = 0, tables_len = 0;
  size_t tile_table_at = 0;
  size_t tile_words_at = 0, tile_lanes_at = 0, deltas_at = 0;
  uint64_t delta_words = 0;
  size_t codes_at = 0, raw_at = 0, total = 0;

  // the code tables: lengths[t * (1 << sym_bits) + s] (0 = unused), and where each table's bytes are
  std::vector<uint8_t> lengths;
  // the plane tables: plane_lengths[(t * planes + q) * 256 + byte], plane code q of table t in lane order
  std::vector<uint8_t> plane_lengths;

  uint64_t tile_elements(uint32_t t) const {
    return t + 1 < n_tiles ? tile_elems : numel - uint64_t(n_tiles - 1) * tile_elems;
  }
  uint64_t tile_raw_offset(uint32_t t) const { return uint64_t(t) * full_tile_raw; }
};

// Sizes that follow from the header fields alone (used by the parser and the encoder).
void derive_sizes(BlobInfo& info);
uint64_t raw_words_for(const BlobInfo& info);

// Parse and validate a v2 or v3 blob. Raises FormatError / IntegrityError naming the problem.
BlobInfo parse_v2(const uint8_t* blob, size_t len, bool check_crc);

// The version field of any floatzip blob (after checking the magic); throws FormatError otherwise.
int blob_version(const uint8_t* blob, size_t len);

inline uint32_t rd32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
inline uint64_t rd64(const uint8_t* p) { return uint64_t(rd32(p)) | uint64_t(rd32(p + 4)) << 32; }
inline void wr32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
  p[2] = uint8_t(v >> 16);
  p[3] = uint8_t(v >> 24);
}
inline void wr64(uint8_t* p, uint64_t v) {
  wr32(p, uint32_t(v));
  wr32(p + 4, uint32_t(v >> 32));
}
inline size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

}  // namespace fz
