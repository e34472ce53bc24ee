// floatzip format v2: the per-lane decoding steps, shared by the CPU core (g++) and the CUDA kernel (NVRTC).
//
// docs/FORMAT.md §1 is the authority on the bytes; this header is the one implementation of reading them
// that both decoders use, so that the CPU tests of this code are tests of the GPU's arithmetic too.
// Everything here is integer arithmetic on a lane's own state: no memory is read that the caller did not
// hand in, and every index the caller derives from a file has been checked by the caller.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FZ_HD __host__ __device__ __forceinline__
#define FZ_COLD __host__ __device__ __noinline__
#define FZ_UNROLL _Pragma("unroll")
#else
#define FZ_HD inline __attribute__((always_inline))
#define FZ_COLD inline __attribute__((noinline, cold))
#define FZ_UNROLL _Pragma("GCC unroll 16")
#endif

#ifdef __CUDACC_RTC__
namespace fz {
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
}  // namespace fz
#else
#include <cstdint>
namespace fz {
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int64_t i64;
}  // namespace fz
#endif

namespace fz {

constexpr int LANES = 32;          // lanes of a tile: one warp
constexpr int PRIMARY_BITS = 12;   // bits of the first-level decode table's index
constexpr int MAX_CODE_LEN = 16;   // longest code the format allows
constexpr int CODE_PAD_WORDS = 4;  // zero words after the code stream
constexpr int RAW_PAD_WORDS = 2;   // zero words after the raw stream
constexpr int MAX_PLANES = 2;      // F32's coded low mantissa byte planes (blob version 3)
constexpr int PLANE_MAX_LEN = 12;  // longest code of a plane: one lookup in a 4096-entry table decodes it

// The most code bits an element may take (a corrupt lane reads no further per element than this).
FZ_HD constexpr u32 max_element_bits(u32 planes) { return u32(MAX_CODE_LEN) + planes * u32(PLANE_MAX_LEN); }

// A primary-table entry: (pattern << 16) | length, or ENTRY_LONG for a prefix of a longer (or unassigned)
// code. `pattern` is the symbol's bits in place in the output word (16-bit dtypes: the whole word with the
// raw bits zero; F32: the top half of it; F8: the low byte). The sign bit is raw, so a pattern's top bit is
// always zero and bit 31 of an entry is free for the flag (tested as the sign of the OR of two entries).
constexpr u32 ENTRY_LONG = 1u << 31;
constexpr u32 ENTRY_LEN_MASK = 31u;

// Elements a lane decodes per step: 16 bytes of output.
FZ_HD constexpr int group_elems(int itemsize) { return 16 / itemsize; }

// The code bits of one lane: a 64-bit window over the MSB-first word stream.
// Invariant: the next unread bit is bit `pos` (from the top) of `win`, whose two halves are words
// next - 2 and next - 1. peek16 needs pos <= 48; after refill(), pos < 32. Decoding two symbols of at
// most 16 bits between refills keeps both true.
struct CodeReader {
  u64 win;
  u32 pos;
  u64 next;

  FZ_HD void init(const u32* words, u64 bit) {
    u64 i = bit >> 5;
    win = (u64(words[i]) << 32) | words[i + 1];
    pos = u32(bit & 31);
    next = i + 2;
  }
  FZ_HD u32 peek16() const { return u32((win << pos) >> 48); }
  FZ_HD void skip(u32 n) { pos += n; }
  // `last` is the highest word index the caller allows to be read (the stream's end plus its padding):
  // a corrupt stream can make a lane run past its own bits, never past the buffer.
  FZ_HD void refill(const u32* words, u64 last) {
    if (pos >= 32) {
      u64 i = next < last ? next : last;
      win = (win << 32) | words[i];
      pos -= 32;
      next += 1;
    }
  }
  FZ_HD u64 bit() const { return (next - 2) * 32 + pos; }
};

// Long codes (more than PRIMARY_BITS bits) and unassigned codes, decoded canonically from 16 bits `v`.
// limit[l] is one past the last code of length l, left-justified to 16 bits; the pattern of code c of
// length l is long_pattern[offset[l] + (v >> (16 - l))]. Returns (pattern << 16) | length, or 0 when `v`
// starts no code (corrupt data).
struct LongCodes {
  u32 limit[MAX_CODE_LEN + 1];
  i64 offset[MAX_CODE_LEN + 1];
  u32 max_len;
};

FZ_HD u32 decode_long(const LongCodes& lc, const u32* long_pattern, u32 v) {
  for (u32 l = PRIMARY_BITS + 1; l <= lc.max_len; ++l) {
    if (v < lc.limit[l]) {
      return (long_pattern[lc.offset[l] + (v >> (16 - l))] << 16) | l;
    }
  }
  return 0;
}

// The raw bits of one lane's full steps: its r-bit fields, LSB-first, in 32-bit words `stride` words apart
// (the lanes of a tile interleave their words: lane c's word i is at c + 32 i).
struct RawReader {
  const u32* p;
  u64 acc;
  u32 have;
  u32 stride;

  FZ_HD void init(const u32* first, u32 stride_words) {
    p = first;
    acc = 0;
    have = 0;
    stride = stride_words;
  }
  FZ_HD u32 get(u32 r) {
    if (have < r) {
      acc |= u64(*p) << have;
      p += stride;
      have += 32;
    }
    u32 v = u32(acc & ((u64(1) << r) - 1));
    acc >>= r;
    have -= r;
    return v;
  }
};

// Raw field i of an element-ordered LSB-first stream (the tail of a tensor's last tile).
FZ_HD u32 raw_field_at(const u32* words, u64 i, u32 r) {
  u64 b = i * r;
  u64 pair = u64(words[b >> 5]) | (u64(words[(b >> 5) + 1]) << 32);
  return u32((pair >> (b & 31)) & ((u64(1) << r) - 1));
}

// The output word of one element from its table entry and raw field (sign on top of the low bits).
// `bits` is the dtype's width (8, 16 or 32) and `shift` the number of low mantissa bits kept raw.
FZ_HD u32 assemble(u32 entry, u32 field, u32 shift, u32 bits) {
  u32 low = field & ((1u << shift) - 1);
  u32 sign = (field >> shift) << (bits - 1);
  u32 pattern = bits == 32 ? (entry & 0xFFFF0000u) : (entry >> 16);
  return pattern | sign | low;
}


// ---------------------------------------------------------------------------------------------------
// One lane of one tile, start to end: the body the CPU decoder runs for each lane and the CUDA kernel
// runs in each thread. Cross-lane work (the lanes' start bits, the tile's error flag) is the caller's.

struct LaneJob {
  const u32* codes;       // the code stream (all tiles)
  u64 last_code_word;     // highest word index a lane may read (the stream's padding included)
  const u32* raw;         // this lane's first raw word; its next words follow every `raw_stride` words
  u32 raw_stride;         // 32: the lanes' words interleave
  const u32* tail_raw;    // the tile's tail fields (element order), or nullptr when the tile has no tail
  u64 full_steps;         // steps every lane of the tile decodes
  u32 tail_count;         // this lane's symbols after the full steps (0..group)
  u64 tail_first;         // index of its first tail symbol among the tile's tail fields
  u32 shift;              // low mantissa bits below the symbol (raw, or raw and coded planes)
  u64 start, end;         // the lane's code bits
};

struct Code {
  const u32* primary;      // 1 << PRIMARY_BITS entries
  const LongCodes* longc;  // used when LONG
  const u32* long_pattern;
  // F32 with coded low planes (blob version 3): the table of each plane code of an element, in lane order
  // (planes[0] decodes the code right after the symbol's). Entries (byte << 8) | length, 4096 of them over
  // the next 12 bits; length 0 is an unassigned code.
  const u16* planes[MAX_PLANES];
};

// The words of the dtype packed four bytes at a time (the output of one step is 16 bytes).
template <int BITS>
struct Pack;
template <>
struct Pack<16> {
  static FZ_HD u32 two(u32 a, u32 b) { return a | (b << 16); }
};

// Stores 16 bytes (the host twin copies; the device uses one vector store, the output being 16-aligned).
FZ_HD void store16(void* dst, u32 a, u32 b, u32 c, u32 d) {
#if defined(__CUDA_ARCH__)
  uint4 v;
  v.x = a;
  v.y = b;
  v.z = c;
  v.w = d;
  *reinterpret_cast<uint4*>(dst) = v;
#else
  u32 v[4] = {a, b, c, d};
  __builtin_memcpy(dst, v, 16);
#endif
}

template <bool LONG>
FZ_HD u32 entry_of(const Code& code, u32 v) {
  u32 e = code.primary[v >> (16 - PRIMARY_BITS)];
  if (LONG && (e & ENTRY_LONG)) e = decode_long(*code.longc, code.long_pattern, v);
  return e;  // an unassigned code has length 0: the lane then cannot end where it should
}

// Two symbols, the second from where the first ends. The fast path looks both up in the primary table;
// when either is a long code (rare), both are decoded again with the long-code tables.
template <bool LONG>
FZ_HD void pair(CodeReader& rd, const Code& code, u32& e1, u32& e2) {
  u32 pos0 = rd.pos;
  e1 = code.primary[rd.peek16() >> (16 - PRIMARY_BITS)];
  rd.skip(e1 & ENTRY_LEN_MASK);
  e2 = code.primary[rd.peek16() >> (16 - PRIMARY_BITS)];
  rd.skip(e2 & ENTRY_LEN_MASK);
  if (LONG && ((e1 | e2) & ENTRY_LONG)) {
    rd.pos = pos0;
    e1 = entry_of<LONG>(code, rd.peek16());
    rd.skip(e1 & ENTRY_LEN_MASK);
    e2 = entry_of<LONG>(code, rd.peek16());
    rd.skip(e2 & ENTRY_LEN_MASK);
  }
}

// 16-bit dtypes (BF16, F16): 8 elements a step. Returns whether the lane ended exactly at its end bit.
template <bool LONG>
FZ_HD bool decode_lane16(const LaneJob& job, const Code& code, u16* out, u64 step_stride, u16* tail_out) {
  CodeReader rd;
  rd.init(job.codes, job.start);
  RawReader rr;
  rr.init(job.raw, job.raw_stride);
  const u32 shift = job.shift, r = shift + 1;
  for (u64 j = 0; j < job.full_steps; ++j) {
    u32 w[4];
FZ_UNROLL
    for (int k = 0; k < 4; ++k) {
      u32 e1, e2;
      pair<LONG>(rd, code, e1, e2);
      rd.refill(job.codes, job.last_code_word);
      u32 f1 = rr.get(r), f2 = rr.get(r);
      w[k] = Pack<16>::two(assemble(e1, f1, shift, 16), assemble(e2, f2, shift, 16));
    }
    store16(out + j * step_stride, w[0], w[1], w[2], w[3]);
  }
  for (u32 k = 0; k < job.tail_count; ++k) {
    u32 e = entry_of<LONG>(code, rd.peek16());
    rd.skip(e & ENTRY_LEN_MASK);
    rd.refill(job.codes, job.last_code_word);
    tail_out[k] = u16(assemble(e, raw_field_at(job.tail_raw, job.tail_first + k, r), shift, 16));
  }
  return rd.bit() == job.end;
}

// Any dtype, one element at a time (F32, F8; and the reference for the 16-bit path's arithmetic).
template <typename W, bool LONG>
FZ_HD bool decode_lane_any(const LaneJob& job, const Code& code, u32 group, W* out, u64 step_stride, W* tail_out) {
  CodeReader rd;
  rd.init(job.codes, job.start);
  RawReader rr;
  rr.init(job.raw, job.raw_stride);
  const u32 shift = job.shift, r = shift + 1, bits = u32(sizeof(W) * 8);
  for (u64 j = 0; j < job.full_steps; ++j) {
    W* o = out + j * step_stride;
    for (u32 k = 0; k < group; k += 2) {
      u32 e1, e2;
      pair<LONG>(rd, code, e1, e2);
      rd.refill(job.codes, job.last_code_word);
      u32 f1 = rr.get(r), f2 = rr.get(r);
      o[k] = W(assemble(e1, f1, shift, bits));
      o[k + 1] = W(assemble(e2, f2, shift, bits));
    }
  }
  for (u32 k = 0; k < job.tail_count; ++k) {
    u32 e = entry_of<LONG>(code, rd.peek16());
    rd.skip(e & ENTRY_LEN_MASK);
    rd.refill(job.codes, job.last_code_word);
    tail_out[k] = W(assemble(e, raw_field_at(job.tail_raw, job.tail_first + k, r), shift, bits));
  }
  return rd.bit() == job.end;
}

// ---------------------------------------------------------------------------------------------------
// F32 with P coded low mantissa byte planes (blob version 3, FORMAT.md §1.7). An element's codes are its
// symbol's, then one per plane from the higher plane down (P = 2: bits 8..15, then bits 0..7; P = 1: bits
// 0..7); its raw field holds the sign and the mantissa bits between the planes and the symbol. The window is
// refilled after every second code: two codes of at most 16 bits each fit the reader's invariant.

// A plane code: its byte (in the low 8 bits), the reader moved past it.
FZ_HD u32 plane_code(CodeReader& rd, const u16* table) {
  const u32 e = table[rd.peek16() >> (16 - PRIMARY_BITS)];
  rd.skip(e & 15u);
  return e >> 8;
}

// A symbol's long code, out of line (rare: the hot loop pays one test for it).
FZ_COLD u32 long_entry(Code code, u32 v) { return decode_long(*code.longc, code.long_pattern, v); }

template <bool LONG>
FZ_HD u32 symbol_code(CodeReader& rd, const Code& code) {
  const u32 v = rd.peek16();
  u32 e = code.primary[v >> (16 - PRIMARY_BITS)];
  if (LONG && (e & ENTRY_LONG)) e = long_entry(code, v);
  rd.skip(e & ENTRY_LEN_MASK);
  return e;
}

// The output word from the symbol's entry, the raw field (sign above `mid` mantissa bits) and the planes' bits.
template <u32 P>
FZ_HD u32 assemble_planes(u32 entry, u32 field, u32 mid, u32 low) {
  return (entry & 0xFFFF0000u) | ((field >> mid) << 31) | ((field & ((1u << mid) - 1)) << (8 * P)) | low;
}

// One element: its codes, refilling after every second code of the lane (`n` counts them; after unrolling a
// step's loop it is a constant), or after every code with EVERY. Returns the planes' bits in place.
template <u32 P, bool LONG, bool EVERY>
FZ_HD u32 element_codes(CodeReader& rd, const Code& code, const LaneJob& job, u32& n, u32& entry) {
  entry = symbol_code<LONG>(rd, code);
  if (EVERY || ++n % 2 == 0) rd.refill(job.codes, job.last_code_word);
  u32 low = 0;
FZ_UNROLL
  for (u32 q = 0; q < P; ++q) {
    low = (low << 8) | plane_code(rd, code.planes[q]);
    if (EVERY || ++n % 2 == 0) rd.refill(job.codes, job.last_code_word);
  }
  return low;
}

// One lane's state through its elements: the kernel runs one per thread (decode_lane_planes); the CPU core
// interleaves a few lanes' steps so that their dependent chains (peek, lookup, skip) overlap.
template <u32 P, bool LONG>
struct PlaneLane {
  CodeReader rd;
  RawReader rr;
  u32 mid, r;

  FZ_HD void init(const LaneJob& job) {
    rd.init(job.codes, job.start);
    rr.init(job.raw, job.raw_stride);
    mid = job.shift - 8 * P;
    r = mid + 1;
  }
  // Full step j: 4 elements, 4 (1 + P) codes (an even count: every step starts just after a refill).
  FZ_HD void step(const LaneJob& job, const Code& code, u32* out) {
    u32 n = 0;
    u32 o[4];
FZ_UNROLL
    for (u32 k = 0; k < 4; ++k) {
      u32 e;
      const u32 low = element_codes<P, LONG, false>(rd, code, job, n, e);
      o[k] = assemble_planes<P>(e, rr.get(r), mid, low);
    }
    store16(out, o[0], o[1], o[2], o[3]);  // the step's 16 bytes (16-aligned on the GPU)
  }
  // The lane's tail after its full steps; whether it ended exactly at its end bit.
  FZ_HD bool finish(const LaneJob& job, const Code& code, u32* tail_out) {
    for (u32 k = 0; k < job.tail_count; ++k) {
      u32 e, n = 0;
      const u32 low = element_codes<P, LONG, true>(rd, code, job, n, e);
      tail_out[k] = assemble_planes<P>(e, raw_field_at(job.tail_raw, job.tail_first + k, r), mid, low);
    }
    return rd.bit() == job.end;
  }
};

template <u32 P, bool LONG>
FZ_HD bool decode_lane_planes(const LaneJob& job, const Code& code, u32* out, u64 step_stride, u32* tail_out) {
  PlaneLane<P, LONG> lane;
  lane.init(job);
  for (u64 j = 0; j < job.full_steps; ++j) lane.step(job, code, out + j * step_stride);
  return lane.finish(job, code, tail_out);
}

// ---------------------------------------------------------------------------------------------------
// The fast 16-bit lane (BF16, F16), raw width R fixed at compile time. Differences from decode_lane16:
//  * no bounds clamp on the code stream: the caller guarantees that 16 bits per symbol past the lane's
//    start, plus 4 words, are readable (the GPU batch pads its stream by that much; the CPU decoder
//    gives lanes near the stream's end a padded copy);
//  * refills are branchless, with the next word loaded ahead (its latency hidden behind a pair);
//  * the raw fields of 32 elements (4 steps) are exactly R words, loaded at once, their bit offsets
//    known at compile time, and each pair's two output words are built in one 32-bit register.

struct Window {
  u32 hi, lo, nxt;  // words i, i+1, i+2 of the lane's stream (nxt: loaded ahead)
  u32 pos;          // next bit of hi:lo, < 32 after refill
  u32 i;            // index of hi, from `base`
  const u32* base;  // the lane's first word

  FZ_HD void init(const u32* words, u64 bit) {
    base = words + (bit >> 5);
    hi = base[0];
    lo = base[1];
    nxt = base[2];
    i = 0;
    pos = u32(bit & 31);
  }
  FZ_HD u32 peek16() const { return u32((((u64(hi) << 32) | lo) << pos) >> 48); }
  FZ_HD void refill() {
    const bool k = pos >= 32;  // one word consumed
    hi = k ? lo : hi;
    lo = k ? nxt : lo;
    pos &= 31;
    i += k;
    nxt = base[i + 2];
  }
  FZ_HD u64 bit(const u32* words) const { return u64(base + i - words) * 32 + pos; }
};

// Both symbols of a pair decoded canonically from the window (hi:lo) at bit pos: out of line, for the
// rare pair that holds a code longer than PRIMARY_BITS. Returns e1 | e2 << 32 (lengths in their low bits).
FZ_COLD u64 slow_pair(u32 hi, u32 lo, u32 pos, Code code) {
  const u64 win = (u64(hi) << 32) | lo;
  const u32 e1 = entry_of<true>(code, u32((win << pos) >> 48));
  pos += e1 & ENTRY_LEN_MASK;
  const u32 e2 = entry_of<true>(code, u32((win << pos) >> 48));
  return u64(e1) | (u64(e2) << 32);
}

template <bool LONG>
FZ_HD void pair_fast(Window& w, const Code& code, u32& e1, u32& e2) {
  const u32 pos0 = w.pos;
  e1 = code.primary[w.peek16() >> (16 - PRIMARY_BITS)];
  w.pos += e1 & ENTRY_LEN_MASK;
  e2 = code.primary[w.peek16() >> (16 - PRIMARY_BITS)];
  w.pos += e2 & ENTRY_LEN_MASK;
  if (LONG && int(e1 | e2) < 0) {
    const u64 both = slow_pair(w.hi, w.lo, pos0, code);
    e1 = u32(both);
    e2 = u32(both >> 32);
    w.pos = pos0 + (e1 & ENTRY_LEN_MASK) + (e2 & ENTRY_LEN_MASK);
  }
}

// Raw field k (of 32) of a block of R words, LSB-first, shifted so that it starts at bit `at` (0 or 16);
// bits outside the field are garbage.
template <u32 R, u32 K, u32 AT>
FZ_HD u32 field_at(const u32* rw) {
  constexpr u32 bit = K * R, q = bit >> 5, o = bit & 31;
  if constexpr (o + R > 32) {  // straddles two words: a funnel shift
    const u64 two = u64(rw[q]) | (u64(rw[q + 1]) << 32);
    if constexpr (o >= AT) return u32(two >> (o - AT));
    else return u32(two << (AT - o));
  } else {
    if constexpr (o >= AT) return rw[q] >> (o - AT);
    else return rw[q] << (AT - o);
  }
}

// The output pair (elements K and K+1 of the block) from the table entries and the raw words.
template <u32 R, u32 K>
FZ_HD u32 out_pair(u32 e1, u32 e2, const u32* rw) {
  constexpr u32 shift = R - 1;
  constexpr u32 low2 = ((1u << shift) - 1) * 0x10001u;
  const u32 t = (field_at<R, K, 0>(rw) & 0xFFFFu) | (field_at<R, K + 1, 16>(rw) & 0xFFFF0000u);
  const u32 signs = (t << (15 - shift)) & 0x80008000u;
  const u32 patterns = (e1 >> 16) | (e2 & 0xFFFF0000u);
  return patterns | signs | (t & low2);
}

template <u32 R, bool LONG, u32 K>
FZ_HD void block_pairs(Window& w, const Code& code, const u32* rw, u32* words) {
  if constexpr (K < 32) {
    u32 e1, e2;
    pair_fast<LONG>(w, code, e1, e2);
    w.refill();
    words[K / 2] = out_pair<R, K>(e1, e2, rw);
    block_pairs<R, LONG, K + 2>(w, code, rw, words);
  }
}

// What a 16-bit lane does with its decoded words: the decoder stores them, the fused GEMV (fz_gemv.h)
// multiplies them into its dot products. `step(j, w)` receives full step j's 8 elements as 4 words (element
// 2i in the low half of w[i], 2i + 1 in the high half), steps in order; `block_end()` follows every 4 steps of
// the main loop (not the last tile's remaining steps); `tail(k, v)` receives the lane's tail element k.
struct StoreSink16 {
  u16* out;
  u64 step_stride;
  u16* tail_out;
  FZ_HD void step(u64 j, const u32* w) { store16(out + j * step_stride, w[0], w[1], w[2], w[3]); }
  FZ_HD void block_end() {}
  FZ_HD void tail(u32 k, u32 v) { tail_out[k] = u16(v); }
};

template <u32 R, bool LONG, class Sink>
FZ_HD bool lane16_run(const LaneJob& job, const Code& code, Sink& sink) {
  Window w;
  w.init(job.codes, job.start);
  const u32* raw = job.raw;
  const u64 blocks = job.full_steps / 4;
  for (u64 b = 0; b < blocks; ++b) {
    u32 rw[R];
FZ_UNROLL
    for (u32 i = 0; i < R; ++i) rw[i] = raw[i * 32];
    raw += 32 * R;
    u32 words[16];
    block_pairs<R, LONG, 0>(w, code, rw, words);
FZ_UNROLL
    for (int s = 0; s < 4; ++s) sink.step(4 * b + s, words + 4 * s);
    sink.block_end();
  }
  // the last tile's remaining full steps and tail: one element at a time
  RawReader rr;
  rr.init(raw, 32);
  for (u64 j = blocks * 4; j < job.full_steps; ++j) {
    u32 o[4];
    for (u32 k = 0; k < 4; ++k) {
      u32 e1, e2;
      pair_fast<LONG>(w, code, e1, e2);
      w.refill();
      const u32 a = assemble(e1, rr.get(R), R - 1, 16);
      o[k] = Pack<16>::two(a, assemble(e2, rr.get(R), R - 1, 16));
    }
    sink.step(j, o);
  }
  for (u32 k = 0; k < job.tail_count; ++k) {
    u32 e = entry_of<LONG>(code, w.peek16());
    w.pos += e & ENTRY_LEN_MASK;
    w.refill();
    sink.tail(k, assemble(e, raw_field_at(job.tail_raw, job.tail_first + k, R), R - 1, 16));
  }
  return w.bit(job.codes) == job.end;
}

template <u32 R, bool LONG>
FZ_HD bool lane16_fast(const LaneJob& job, const Code& code, u16* out, u64 step_stride, u16* tail_out) {
  StoreSink16 sink{out, step_stride, tail_out};
  return lane16_run<R, LONG>(job, code, sink);
}

}  // namespace fz
