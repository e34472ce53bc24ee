// The CPU decoder's fast path for full 16-bit tiles, block by block (4 steps = 32 symbols per lane):
//
//  1. codes: scalar, four lanes at a time (independent dependency chains for the out-of-order core), each
//     symbol one L1 lookup in the 4096-entry table; the entries go to a 32 x 32 buffer. (Vector gathers
//     were measured at ~5.5 ns per 16 elements on this project's machines: slower than scalar loads.)
//  2. words: AVX-512, 16 lanes per vector, the raw fields at bit offsets fixed at compile time, two output
//     words per 32-bit lane, then a transpose so that each lane's 16 bytes land in place.
//
// It computes exactly what fz_lane.h's lane16_fast computes (the tests compare both with the reference).
#include "core/decode_avx512.h"

#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fz {

namespace {

#define FZ_COLD_FIX __attribute__((noinline, cold)) inline

// Phase 1 for lanes [c0, c0 + 8): the entries of the block's 32 symbols. A lane's state is its bit
// position alone; each pair reloads a 64-bit window at it (at least 33 valid bits: two codes), so eight lanes
// fit in registers and their dependency chains overlap in the out-of-order core.
FZ_COLD_FIX void fix_long(const u32* codes, u64& p, u32& e1, u32& e2, const Code& code) {
  const u32* w = codes + (p >> 5);
  const u64 both = slow_pair(w[0], w[1], u32(p & 31), code);
  e1 = u32(both);
  e2 = u32(both >> 32);
}

template <bool LONG>
inline void codes8(u64* pos, u32 (*E)[32], int c0, const u32* codes, const u32* primary, const Code& code) {
  u64 p0 = pos[0], p1 = pos[1], p2 = pos[2], p3 = pos[3], p4 = pos[4], p5 = pos[5], p6 = pos[6], p7 = pos[7];
  // the two words at the lane's position from one 8-byte load, halves swapped (little-endian words,
  // MSB-first stream); shifts by entries rely on x86's and AArch64's shift counts being taken mod 64
  // (an entry's bits 5..15 are zero, so `e & 63` is its length)
#define FZ_LANE_PAIR(L)                                                                   \
  {                                                                                       \
    u64 two;                                                                              \
    std::memcpy(&two, codes + (p##L >> 5), 8);                                            \
    u64 win = ((two << 32) | (two >> 32)) << (p##L & 31);                                 \
    u32 e1 = primary[win >> (64 - PRIMARY_BITS)];                                         \
    win <<= (e1 & 63);                                                                    \
    u32 e2 = primary[win >> (64 - PRIMARY_BITS)];                                         \
    if (LONG && int(e1 | e2) < 0) fix_long(codes, p##L, e1, e2, code);                    \
    p##L += (e1 + e2) & 63; /* lengths <= 16 in bits 0..4, bits 5..15 zero: no carry */  \
    E[s][c0 + L] = e1;                                                                    \
    E[s + 1][c0 + L] = e2;                                                                \
  }
  for (int s = 0; s < 32; s += 2) {
    FZ_LANE_PAIR(0)
    FZ_LANE_PAIR(1)
    FZ_LANE_PAIR(2)
    FZ_LANE_PAIR(3)
    FZ_LANE_PAIR(4)
    FZ_LANE_PAIR(5)
    FZ_LANE_PAIR(6)
    FZ_LANE_PAIR(7)
  }
#undef FZ_LANE_PAIR
  pos[0] = p0;
  pos[1] = p1;
  pos[2] = p2;
  pos[3] = p3;
  pos[4] = p4;
  pos[5] = p5;
  pos[6] = p6;
  pos[7] = p7;
}

// Phase 2, portable: the words of the block from the entries and the raw words (rw: word i of lane c at
// rw[32 i + c]); out: the block's first element.
template <u32 R>
void words_portable(const u32 (*E)[32], const u32* rw, u16* out) {
  constexpr u32 shift = R - 1;
  for (int c = 0; c < 32; ++c) {
    for (u32 s = 0; s < 32; ++s) {
      const u32 bit = s * R, q = bit >> 5, o = bit & 31;
      u64 two = u64(rw[32 * q + c]);
      if (o + R > 32) two |= u64(rw[32 * (q + 1) + c]) << 32;
      const u32 f = u32(two >> o);
      const u32 e = E[s][c];
      out[(s / 8) * 256 + c * 8 + s % 8] = u16((e >> 16) | (f & ((1u << shift) - 1)) | (((f >> shift) & 1) << 15));
    }
  }
}

#if defined(__x86_64__)
#define FZ_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512vbmi2"), always_inline)) inline

template <u32 R, u32 K>
FZ_AVX512 __m512i field(const u32* rw) {
  constexpr u32 bit = K * R, q = bit >> 5, o = bit & 31;
  const __m512i w = _mm512_loadu_si512(rw + 32 * q);
  if constexpr (o + R > 32) {
    return _mm512_shrdi_epi32(w, _mm512_loadu_si512(rw + 32 * (q + 1)), o);
  } else {
    return _mm512_srli_epi32(w, o);
  }
}

// Elements K and K + 1 of 16 lanes, one 32-bit lane each (low half K).
template <u32 R, u32 K>
FZ_AVX512 __m512i pair_words(const u32 (*E)[32], int half, const u32* rw) {
  constexpr u32 shift = R - 1;
  const __m512i e1 = _mm512_loadu_si512(&E[K][16 * half]), e2 = _mm512_loadu_si512(&E[K + 1][16 * half]);
  const __m512i x = _mm512_ternarylogic_epi32(field<R, K>(rw), _mm512_slli_epi32(field<R, K + 1>(rw), 16),
                                              _mm512_set1_epi32(0xFFFF), 0xE4);  // c ? a : b
  const __m512i pat =
      _mm512_ternarylogic_epi32(_mm512_srli_epi32(e1, 16), e2, _mm512_set1_epi32(int(0xFFFF0000u)), 0xF8);  // a|(b&c)
  const __m512i low2 = _mm512_set1_epi32(int(((1u << shift) - 1) * 0x10001u));
  const __m512i t = _mm512_ternarylogic_epi32(low2, x, _mm512_slli_epi32(x, 15 - shift), 0xCA);  // a ? b : c
  return _mm512_ternarylogic_epi32(t, _mm512_set1_epi32(int(((1u << shift) - 1) * 0x10001u | 0x80008000u)), pat,
                                   0xEA);  // (t & keep) | pat
}

// Four vectors P0..P3 (u32 k of 16 lanes) stored lane after lane: each lane's 16 bytes in place.
FZ_AVX512 void store_step(u16* out, __m512i p0, __m512i p1, __m512i p2, __m512i p3) {
  const __m512i t0 = _mm512_unpacklo_epi32(p0, p1), t1 = _mm512_unpackhi_epi32(p0, p1);
  const __m512i t2 = _mm512_unpacklo_epi32(p2, p3), t3 = _mm512_unpackhi_epi32(p2, p3);
  const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
  const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
  const __m512i v01 = _mm512_shuffle_i32x4(u0, u1, 0x44), v23 = _mm512_shuffle_i32x4(u2, u3, 0x44);
  const __m512i w01 = _mm512_shuffle_i32x4(u0, u1, 0xEE), w23 = _mm512_shuffle_i32x4(u2, u3, 0xEE);
  _mm512_storeu_si512(out, _mm512_shuffle_i32x4(v01, v23, 0x88));
  _mm512_storeu_si512(out + 32, _mm512_shuffle_i32x4(v01, v23, 0xDD));
  _mm512_storeu_si512(out + 64, _mm512_shuffle_i32x4(w01, w23, 0x88));
  _mm512_storeu_si512(out + 96, _mm512_shuffle_i32x4(w01, w23, 0xDD));
}

template <u32 R, u32 K>
FZ_AVX512 void step_words(const u32 (*E)[32], const u32* rw, u16* out) {
  if constexpr (K < 32) {
    for (int half = 0; half < 2; ++half) {
      const u32* r = rw + 16 * half;
      store_step(out + (K / 8) * 256 + 128 * half, pair_words<R, K>(E, half, r), pair_words<R, K + 2>(E, half, r),
                 pair_words<R, K + 4>(E, half, r), pair_words<R, K + 6>(E, half, r));
    }
    step_words<R, K + 8>(E, rw, out);
  }
}

template <u32 R>
__attribute__((target("avx512f,avx512vl,avx512bw,avx512vbmi2"))) void words_avx512(const u32 (*E)[32], const u32* rw,
                                                                                 u16* out) {
  step_words<R, 0>(E, rw, out);
}
#endif

bool use_avx512() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vbmi2");
  return ok;
#else
  return false;
#endif
}

template <bool LONG, u32 R>
bool tile(const Tile16& t) {
  u64 pos[32];
  for (int c = 0; c < 32; ++c) pos[c] = t.start[c];
  const u32* primary = t.code->primary;
  alignas(64) u32 E[32][32];
  const bool vec = t.vector && use_avx512();
  for (u64 blk = 0; blk < t.steps / 4; ++blk) {
    // 32 code streams are more than the hardware prefetchers follow: ask for each lane's bits 128 bytes
    // ahead, ~5 blocks at ~26 bytes a block (measured on an 8 Mi BF16 tensor, one thread: 1.6 ns a symbol
    // without, 1.0 with; 256 bytes or more ahead helped less). A prefetch past the buffer is harmless.
    for (int c = 0; c < 32; ++c) __builtin_prefetch(t.codes + (pos[c] >> 5) + 32, 0, 3);
    for (int c0 = 0; c0 < 32; c0 += 8) codes8<LONG>(pos + c0, E, c0, t.codes, primary, *t.code);
    const u32* rw = t.raw + blk * 32 * R;
    u16* out = t.out + blk * 4 * 256;
#if defined(__x86_64__)
    if (vec) {
      words_avx512<R>(E, rw, out);
      continue;
    }
#endif
    words_portable<R>(E, rw, out);
  }
  bool ok = true;
  for (int c = 0; c < 32; ++c) ok &= pos[c] == t.end[c];
  return ok;
}

template <bool LONG>
bool tile_r(const Tile16& t, u32 r) {
  switch (r) {
    case 4: return tile<LONG, 4>(t);
    case 5: return tile<LONG, 5>(t);
    case 6: return tile<LONG, 6>(t);
    case 7: return tile<LONG, 7>(t);
    case 8: return tile<LONG, 8>(t);
    case 9: return tile<LONG, 9>(t);
    case 10: return tile<LONG, 10>(t);
    case 11: return tile<LONG, 11>(t);
    default: return false;
  }
}

}  // namespace

bool avx512_available() { return use_avx512(); }

bool fast_path_available() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("bmi2");
  return ok;
#else
  return true;
#endif
}

bool decode_tile16_fast(const Tile16& t, bool long_codes, u32 r) {
  return long_codes ? tile_r<true>(t, r) : tile_r<false>(t, r);
}

}  // namespace fz
