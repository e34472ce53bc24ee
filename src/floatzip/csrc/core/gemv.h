#pragma once

#include <cstddef>
#include <cstdint>

#include "core/batch.h"

namespace fz {

// The fused GEMV's own arrays, beside a one-tensor decode batch (see fz_gemv.cu for their meaning).
struct GemvArrays {
  const float* x;        // X[b, col] at x[col * nb + b]
  const u64* seg_base;   // per tile: its first segment
  const u64* row_seg;    // per row of W, and one past: its first segment
  float* partials;       // [segments][nb], or [segments][32][nb] on path 0
  float* y;              // [nb][rows]
};

struct GemvSizes {
  size_t x, seg_base, row_seg, partials, y;  // element counts
  u64 in, rows;
  u32 nb;
  int path;  // 2: in % 1024 == 0, 1: in % 256 == 0, 0: any shape
};

// Throws std::invalid_argument unless the batch (one 16-bit tensor of rows * in elements, tiles in order) and
// the GEMV arrays hold together: every index the GEMV kernel and gemv_finish read by is then in range.
void validate_gemv(const BatchArrays& a, const BatchSizes& n, const GemvArrays& g, const GemvSizes& s);

// What gemv_kernel<r, long_codes, nb, f16, path> and gemv_finish do to these arrays, on the CPU.
void gemv_host(const BatchArrays& a, const BatchSizes& n, const GemvArrays& g, const GemvSizes& s, uint32_t r,
               bool long_codes, bool f16, int threads);

}  // namespace fz
