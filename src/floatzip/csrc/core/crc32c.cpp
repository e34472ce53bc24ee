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

// Polynomials mod P in the reflected order of the CRC register (bit 31 is x^0, bit 0 is x^31).
uint32_t mul_mod_p(uint32_t a, uint32_t b) {
  uint32_t prod = 0;
  for (uint32_t m = 1u << 31; m; m >>= 1) {  // a's terms x^0, x^1, ... while b runs through b * x^k
    if (a & m) prod ^= b;
    b = b & 1 ? (b >> 1) ^ POLY : b >> 1;
  }
  return prod;
}

// x^(2^k) mod P for k < 67: enough for x^(8 n) with any 64-bit n.
struct PowersOfX {
  uint32_t p[67];
  PowersOfX() {
    p[0] = 1u << 30;  // x^1
    for (int k = 1; k < 67; ++k) p[k] = mul_mod_p(p[k - 1], p[k - 1]);
  }
};

// x^(8 n) mod P: the factor that moves a CRC register past n zero bytes.
uint32_t x_pow_8n(uint64_t n) {
  static const PowersOfX pw;
  uint32_t r = 1u << 31;  // x^0
  for (int k = 3; n; n >>= 1, ++k)
    if (n & 1) r = mul_mod_p(pw.p[k], r);
  return r;
}

#if defined(__x86_64__)
constexpr size_t STREAM = 8192;  // bytes per stream per round of the three-stream loop

__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = ~crc;
  while (n && (reinterpret_cast<uintptr_t>(p) & 7)) {
    c = _mm_crc32_u8(uint32_t(c), *p++);
    --n;
  }
  if (n >= 3 * STREAM) {
    // three independent streams hide the instruction's latency; the registers of the second and third
    // are moved past the bytes that follow them (times x^(8 STREAM) mod P) and merged
    static const uint32_t op = x_pow_8n(STREAM);
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
      c = mul_mod_p(op, mul_mod_p(op, uint32_t(c)) ^ uint32_t(c1)) ^ uint32_t(c2);
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

// Folding with carry-less multiplies (AVX-512 VPCLMULQDQ: four 128-bit lanes per instruction), the method of
// Intel's "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ", with its constants derived here.
//
// A 128-bit value X loaded little-endian stands for the polynomial sum X_i x^(127 - i) (bit 0 is the
// message's first bit: CRC-32C is reflected). The loop keeps sixteen such values, one per 16-byte slot of a
// 256-byte window; each is worth the bytes it replaced (same remainder mod P once the rest is appended).
// Moving X forward by D bits is X * x^D mod P: its first 64 bits (degree 64..127) times x^(64 + D), its last
// 64 times x^D. A 64 x 64 carry-less product of reflected operands comes out one degree short, so the
// constant for x^E holds x^(E - 1) mod P, bit-reversed into 64 bits (bits 32..63: it has degree < 32).
constexpr uint64_t POLY_NORMAL = 0x1EDC6F41u;  // P without its x^32 term, unreflected

constexpr uint64_t fold_constant(uint32_t e) {
  uint64_t r = 1;  // x^0
  for (uint32_t k = 1; k < e; ++k) {
    r <<= 1;
    if (r >> 32) r = (r & 0xFFFFFFFFu) ^ POLY_NORMAL;
  }
  uint64_t rev = 0;  // x^d -> bit 63 - d
  for (int d = 0; d < 32; ++d)
    if ((r >> d) & 1) rev |= uint64_t(1) << (63 - d);
  return rev;
}

constexpr size_t FOLD_BLOCK = 256;  // four 512-bit registers
constexpr uint64_t K_BLOCK_LO = fold_constant(64 + 8 * FOLD_BLOCK), K_BLOCK_HI = fold_constant(8 * FOLD_BLOCK);
constexpr uint64_t K_128_LO = fold_constant(64 + 128), K_128_HI = fold_constant(128);

#define FZ_FOLD __attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.2")))

FZ_FOLD inline __m512i fold512(__m512i x, __m512i k, const uint8_t* next) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11),
                                   _mm512_loadu_si512(next), 0x96);  // a ^ b ^ c
}

// n >= FOLD_BLOCK
FZ_FOLD uint32_t crc32c_fold(uint32_t crc, const uint8_t* p, size_t n) {
  __m512i x0 = _mm512_loadu_si512(p), x1 = _mm512_loadu_si512(p + 64), x2 = _mm512_loadu_si512(p + 128),
          x3 = _mm512_loadu_si512(p + 192);
  // a register that starts at c is the same as c XORed into the message's first four bytes
  x0 = _mm512_xor_si512(x0, _mm512_zextsi128_si512(_mm_cvtsi32_si128(int(~crc))));
  p += FOLD_BLOCK;
  n -= FOLD_BLOCK;
  const __m512i k = _mm512_set_epi64(K_BLOCK_HI, K_BLOCK_LO, K_BLOCK_HI, K_BLOCK_LO, K_BLOCK_HI, K_BLOCK_LO,
                                     K_BLOCK_HI, K_BLOCK_LO);
  for (; n >= FOLD_BLOCK; p += FOLD_BLOCK, n -= FOLD_BLOCK) {
    x0 = fold512(x0, k, p);
    x1 = fold512(x1, k, p + 64);
    x2 = fold512(x2, k, p + 128);
    x3 = fold512(x3, k, p + 192);
  }
  // the sixteen slots into one, each moved forward 128 bits and the next one added
  alignas(64) uint64_t slot[32];
  _mm512_store_si512(slot, x0);
  _mm512_store_si512(slot + 8, x1);
  _mm512_store_si512(slot + 16, x2);
  _mm512_store_si512(slot + 24, x3);
  const __m128i k128 = _mm_set_epi64x(int64_t(K_128_HI), int64_t(K_128_LO));
  __m128i acc = _mm_load_si128(reinterpret_cast<const __m128i*>(slot));
  for (int i = 1; i < 16; ++i) {
    acc = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(acc, k128, 0x00), _mm_clmulepi64_si128(acc, k128, 0x11)),
                        _mm_load_si128(reinterpret_cast<const __m128i*>(slot + 2 * i)));
  }
  // the register after the 16 bytes acc stands for, from zero; then the rest with the instruction
  uint64_t c = _mm_crc32_u64(0, uint64_t(_mm_cvtsi128_si64(acc)));
  c = _mm_crc32_u64(c, uint64_t(_mm_extract_epi64(acc, 1)));
  return crc32c_sse42(~uint32_t(c), p, n);
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

bool crc32c_fold_available() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("pclmul") &&
                         __builtin_cpu_supports("sse4.2");
  return ok;
#else
  return false;
#endif
}

uint32_t crc32c_path(uint32_t crc, const uint8_t* p, size_t n, CrcPath path) {
  switch (path) {
    case CrcPath::Portable: return crc32c_portable(crc, p, n);
#if defined(__x86_64__)
    case CrcPath::Instruction: return crc32c_sse42(crc, p, n);
    case CrcPath::Fold: return n >= FOLD_BLOCK ? crc32c_fold(crc, p, n) : crc32c_sse42(crc, p, n);
#else
    default: break;
#endif
  }
  return crc32c_portable(crc, p, n);
}

uint32_t crc32c(uint32_t crc, const uint8_t* p, size_t n) {
#if defined(__x86_64__)
  // folding pays once its set-up and final 16 folds are amortised (measured: see BENCHMARKS.md)
  if (n >= 4 * FOLD_BLOCK && crc32c_fold_available()) return crc32c_fold(crc, p, n);
  if (crc32c_hardware()) return crc32c_sse42(crc, p, n);
#endif
  return crc32c_portable(crc, p, n);
}

uint32_t crc32c_combine(uint32_t crc1, uint32_t crc2, uint64_t len2) {
  return len2 ? mul_mod_p(x_pow_8n(len2), crc1) ^ crc2 : crc1;
}

uint32_t crc32c_join(const uint32_t* crcs, size_t n, uint64_t part_len, uint64_t last_len) {
  if (n == 0) return 0;
  uint32_t c = crcs[0];
  const uint32_t shift = x_pow_8n(part_len);  // once: every part but the last has the same length
  for (size_t i = 1; i + 1 < n; ++i) c = mul_mod_p(shift, c) ^ crcs[i];
  return n > 1 ? crc32c_combine(c, crcs[n - 1], last_len) : c;
}

uint32_t crc32c_parallel(uint32_t crc, const uint8_t* data, size_t n, int threads) {
  constexpr size_t MIN_SLICE = 1 << 20;  // ~25 us of one core's work: well above a hand-off's cost
  size_t parts = threads < 1 ? 1 : size_t(threads);
  if (parts > n / MIN_SLICE) parts = n / MIN_SLICE;
  if (parts <= 1) return crc32c(crc, data, n);
  std::vector<uint32_t> crcs(parts);
  std::vector<size_t> lo(parts + 1);
  for (size_t i = 0; i <= parts; ++i) lo[i] = n * i / parts;
  parallel_for(parts, threads, [&](size_t i) { crcs[i] = crc32c(i ? 0 : crc, data + lo[i], lo[i + 1] - lo[i]); });
  uint32_t c = crcs[0];
  for (size_t i = 1; i < parts; ++i) c = crc32c_combine(c, crcs[i], lo[i + 1] - lo[i]);
  return c;
}

}  // namespace fz
