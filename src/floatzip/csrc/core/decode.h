// The CPU decoder of format v2: the per-lane steps of fz_lane.h, driven tile by tile on the pool's threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/blob.h"
#include "core/huffman.h"

namespace fz {

// Decode a parsed blob into `out` (numel words of the dtype's width). Every stream read is bounded by the
// sections' sizes; a lane that does not end exactly at its stored length, or meets an unassigned code,
// raises IntegrityError naming its tile. The data CRC is checked when check_crc is set.
void decode_v2(const uint8_t* blob, const BlobInfo& info, void* out, int threads, bool check_crc);

// Decode tiles [first, first + count) only, into `out` (which holds the elements of exactly those tiles).
void decode_v2_tiles(const uint8_t* blob, const BlobInfo& info, uint32_t first, uint32_t count, void* out,
                     int threads);

// The first word of each tile's lane deltas (a prefix sum over the tiles' delta widths).
std::vector<uint64_t> delta_offsets(const uint8_t* blob, const BlobInfo& info);
// Start and end bit of every lane of tile t (32 values each), from the tile index.
void lane_starts(const uint8_t* blob, const BlobInfo& info, uint32_t t, uint64_t delta_at, uint64_t* start,
                 uint64_t* end);

}  // namespace fz
