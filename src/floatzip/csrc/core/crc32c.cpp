#include "core/crc32c.h"

#include <cstring>
#include <vector>

#include "core/pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fz {

namespace {

constexpr uint32_t POLY = 0x82F63B78u;  // Castagnoli, reflected

struct Tables {
  uint32_t t[8][256];
  Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};
const Tables& tables() {
  static const Tables tb;
  return tb;
}

uint32_t gf2_times(const uint32_t* mat, uint32_t vec) {
  uint32_t sum = 0;
  for (int i = 0; vec; ++i, vec >>= 1)
    if (vec & 1) sum ^= mat[i];
  return sum;
}
void gf2_square(uint32_t* sq, const uint32_t* mat) {
  for (int i = 0; i < 32; ++i) sq[i] = gf2_times(mat, mat[i]);
}

// The GF(2) operator that appends `len` zero bytes to a CRC register (zlib's crc32_combine method).
void zeros_operator(uint64_t len, uint32_t* out) {
  uint32_t even[32], odd[32];
  odd[0] = POLY;  // one zero bit
  uint32_t row = 1;
  for (int i = 1; i < 32; ++i) {
    odd[i] = row;
    row <<= 1;
  }
  gf2_square(even, odd);  // two zero bits
  gf2_square(odd, even);  // four zero bits
  // out = identity, then multiplied by the operator of each set bit of len (in bytes)
  for (int i = 0; i < 32; ++i) out[i] = 1u << i;
  uint32_t tmp[32];
  bool use_even = true;
  while (len) {
    if (use_even)
      gf2_square(even, odd);  // 1, 4, 16, ... zero bytes
    else
      gf2_square(odd, even);  // 2, 8, 32, ...
    const uint32_t* m = use_even ? even : odd;
    if (len & 1) {
      for (int i = 0; i < 32; ++i) tmp[i] = gf2_times(m, out[i]);
      std::memcpy(out, tmp, sizeof(tmp));
    }
    len >>= 1;
    use_even = !use_even;
  }
}

#if defined(__x86_64__)
constexpr size_t STREAM = 8192;  // bytes per stream per round of the three-stream loop

const uint32_t* stream_operator() {
  static uint32_t op[32];
  static const bool done = (zeros_operator(STREAM, op), true);
  (void)done;
  return op;
}

__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = ~crc;
  while (n && (reinterpret_cast<uintptr_t>(p) & 7)) {
    c = _mm_crc32_u8(uint32_t(c), *p++);
    --n;
  }
  if (n >= 3 * STREAM) {
    // three independent streams hide the instruction's latency; the registers of the second and third
    // are moved past the bytes that follow them by the precomputed zeros operator and merged
    const uint32_t* op = stream_operator();
    while (n >= 3 * STREAM) {
      uint64_t c1 = 0, c2 = 0;
      for (size_t i = 0; i < STREAM; i += 8) {
        uint64_t a, b, d;
        std::memcpy(&a, p + i, 8);
        std::memcpy(&b, p + STREAM + i, 8);
        std::memcpy(&d, p + 2 * STREAM + i, 8);
        c = _mm_crc32_u64(c, a);
        c1 = _mm_crc32_u64(c1, b);
        c2 = _mm_crc32_u64(c2, d);
      }
      // the register of A+B is shift(reg_A) ^ reg_B when B's register started at zero (linearity)
      c = gf2_times(op, gf2_times(op, uint32_t(c)) ^ uint32_t(c1)) ^ uint32_t(c2);
      p += 3 * STREAM;
      n -= 3 * STREAM;
    }
  }
  while (n >= 8) {
    uint64_t a;
    std::memcpy(&a, p, 8);
    c = _mm_crc32_u64(c, a);
    p += 8;
    n -= 8;
  }
  while (n--) c = _mm_crc32_u8(uint32_t(c), *p++);
  return ~uint32_t(c);
}
#endif

}  // namespace

uint32_t crc32c_portable(uint32_t crc, const uint8_t* p, size_t n) {
  const Tables& tb = tables();
  uint32_t c = ~crc;
  while (n >= 8) {
    uint32_t a, b;
    std::memcpy(&a, p, 4);
    std::memcpy(&b, p + 4, 4);
    a ^= c;
    c = tb.t[7][a & 0xFF] ^ tb.t[6][(a >> 8) & 0xFF] ^ tb.t[5][(a >> 16) & 0xFF] ^ tb.t[4][a >> 24] ^
        tb.t[3][b & 0xFF] ^ tb.t[2][(b >> 8) & 0xFF] ^ tb.t[1][(b >> 16) & 0xFF] ^ tb.t[0][b >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = tb.t[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
  return ~c;
}

bool crc32c_hardware() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("sse4.2");
  return ok;
#else
  return false;
#endif
}

uint32_t crc32c(uint32_t crc, const uint8_t* p, size_t n) {
#if defined(__x86_64__)
  if (crc32c_hardware()) return crc32c_sse42(crc, p, n);
#endif
  return crc32c_portable(crc, p, n);
}

uint32_t crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2) {
  if (len2 == 0) return crc1;
  uint32_t even[32], odd[32];
  odd[0] = POLY;  // the operator for one zero bit
  uint32_t row = 1;
  for (int i = 1; i < 32; ++i) {
    odd[i] = row;
    row <<= 1;
  }
  gf2_square(even, odd);  // two zero bits
  gf2_square(odd, even);  // four zero bits
  do {
    gf2_square(even, odd);  // first pass: one zero byte
    if (len2 & 1) crc1 = gf2_times(even, crc1);
    len2 >>= 1;
    if (!len2) break;
    gf2_square(odd, even);
    if (len2 & 1) crc1 = gf2_times(odd, crc1);
    len2 >>= 1;
  } while (len2);
  return crc1 ^ crc2;
}

uint32_t crc32c_parallel(const uint8_t* data, size_t n, int threads) {
  constexpr size_t MIN_SLICE = 8 << 20;
  size_t parts = threads < 1 ? 1 : size_t(threads);
  if (parts > n / MIN_SLICE) parts = n / MIN_SLICE;
  if (parts <= 1) return crc32c(0, data, n);
  std::vector<uint32_t> crcs(parts);
  std::vector<size_t> lo(parts + 1);
  for (size_t i = 0; i <= parts; ++i) lo[i] = n * i / parts;
  parallel_for(parts, threads, [&](size_t i) { crcs[i] = crc32c(0, data + lo[i], lo[i + 1] - lo[i]); });
  uint32_t c = crcs[0];
  for (size_t i = 1; i < parts; ++i) c = crc32c_combine(c, crcs[i], lo[i + 1] - lo[i]);
  return c;
}

}  // namespace fz
