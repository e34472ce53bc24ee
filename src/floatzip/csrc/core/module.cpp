// floatzip._core: the Python face of the compiled core. Every function takes plain buffers (bytes,
// bytearray, memoryview, NumPy arrays) and releases the GIL while it works.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <memory>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif
#include <string>
#include <vector>

#include "core/batch.h"
#include "core/blob.h"
#include "core/crc32c.h"
#include "core/decode.h"
#include "core/decode_v1.h"
#include "core/df11.h"
#include "core/encode.h"
#include "core/gemv.h"
#include "fz_gemv.h"
#include "core/huffman.h"
#include "core/pool.h"

namespace nb = nanobind;
using namespace fz;

namespace {

// A contiguous buffer borrowed from a Python object for the duration of a call.
class Buffer {
 public:
  Buffer(nb::handle obj, bool writable, const char* what) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj.ptr(), &view_, flags) != 0) {
      PyErr_Clear();
      throw nb::type_error((std::string(what) + ": expected a contiguous" + (writable ? " writable" : "") +
                            " buffer")
                               .c_str());
    }
  }
  ~Buffer() { PyBuffer_Release(&view_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  uint8_t* data() const { return static_cast<uint8_t*>(view_.buf); }
  size_t size() const { return size_t(view_.len); }

 private:
  Py_buffer view_{};
};

// The blob's bytes, 4-byte aligned (the streams are read as 32-bit words): the buffer itself, or a copy.
struct Aligned {
  const uint8_t* p;
  std::vector<uint32_t> copy;
  Aligned(const Buffer& b) {
    if (reinterpret_cast<uintptr_t>(b.data()) % 4 == 0) {
      p = b.data();
    } else {
      copy.resize((b.size() + 3) / 4);
      std::memcpy(copy.data(), b.data(), b.size());
      p = reinterpret_cast<const uint8_t*>(copy.data());
    }
  }
};

const DtypeLayout& layout_or_throw(int code) {
  const DtypeLayout* l = layout_for_code(code);
  if (!l) throw nb::value_error(("unknown dtype code " + std::to_string(code)).c_str());
  return *l;
}

int threads_or_default(int threads) { return threads > 0 ? threads : default_threads(); }

nb::bytes compress(nb::handle words, int dtype_code, std::vector<uint64_t> shape, uint32_t steps, int max_code_len,
                   int threads, int max_tables, int planes) {
  const DtypeLayout& L = layout_or_throw(dtype_code);
  Buffer in(words, false, "words");
  if (shape.size() > size_t(MAX_NDIM)) throw nb::value_error("at most 8 dimensions");
  uint64_t numel = 1;
  for (uint64_t s : shape) numel *= s;
  if (in.size() != numel * L.itemsize()) throw nb::value_error("words do not match the shape");
  if (steps < 8 || steps > MAX_STEPS || steps % 8) throw nb::value_error("steps must be a multiple of 8 in [8, 8192]");
  if (max_code_len < 1 || max_code_len > MAX_CODE_LEN) throw nb::value_error("max_code_len must be in [1, 16]");
  if (max_tables < 0 || max_tables > MAX_TABLES) throw nb::value_error("max_tables must be in [0, 16]");
  if (planes < -1 || planes > MAX_PLANES || (planes > 0 && L.code != 2))
    throw nb::value_error("planes must be -1 (the encoder's choice) or 0, and 1 or 2 only for F32");
  threads = threads_or_default(threads);
  // the words must be aligned to their width for the encoder's loads
  std::vector<uint32_t> copy;
  const void* w = in.data();
  if (reinterpret_cast<uintptr_t>(w) % L.itemsize()) {
    copy.resize((in.size() + 3) / 4);
    std::memcpy(copy.data(), in.data(), in.size());
    w = copy.data();
  }
  Plan plan;
  {
    nb::gil_scoped_release nogil;
    plan = plan_v2(w, L, shape.data(), int(shape.size()), steps, max_code_len, threads, max_tables, planes);
  }
  PyObject* out = PyBytes_FromStringAndSize(nullptr, Py_ssize_t(plan.info.total));
  if (!out) throw nb::python_error();
  nb::bytes result = nb::steal<nb::bytes>(out);
  uint8_t* dst = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(out));
  {
    nb::gil_scoped_release nogil;
    write_v2(plan, w, dst);
  }
  return result;
}

nb::dict info_dict(const BlobInfo& b) {
  nb::dict d;
  d["version"] = b.version;
  d["planes"] = b.planes;
  d["plane_max_len"] = b.plane_max_len;
  d["raw_bits"] = b.raw_bits;
  d["plane_lengths"] = nb::bytes(reinterpret_cast<const char*>(b.plane_lengths.data()), b.plane_lengths.size());
  d["dtype_code"] = b.layout->code;
  std::vector<uint64_t> shape(b.shape, b.shape + b.ndim);
  d["shape"] = nb::tuple(nb::cast(shape));
  d["sym_bits"] = b.sym_bits;
  d["shift"] = b.shift;
  d["max_code_len"] = b.max_code_len;
  d["n_tables"] = b.n_tables;
  d["lane_map"] = b.lane_map;
  d["steps"] = b.steps;
  d["n_tiles"] = b.n_tiles;
  d["numel"] = b.numel;
  d["code_words"] = b.code_words;
  d["raw_words"] = b.raw_words;
  d["delta_words"] = b.delta_words;
  d["data_crc"] = b.data_crc;
  d["group"] = b.group;
  d["tile_elems"] = b.tile_elems;
  d["tables_at"] = b.tables_at;
  d["tables_len"] = b.tables_len;
  d["tile_table_at"] = b.tile_table_at;
  d["tile_words_at"] = b.tile_words_at;
  d["tile_lanes_at"] = b.tile_lanes_at;
  d["deltas_at"] = b.deltas_at;
  d["codes_at"] = b.codes_at;
  d["raw_at"] = b.raw_at;
  d["total"] = b.total;
  d["lengths"] = nb::bytes(reinterpret_cast<const char*>(b.lengths.data()), b.lengths.size());
  return d;
}

// A large output the decoder is about to fill: ask Linux for transparent huge pages over it, as NumPy does
// for its own large arrays (torch.empty does not). Measured on a 16 MiB tensor freshly allocated: first-touch
// page faults cost ~0.3 ns per BF16 element with 4 KiB pages, more than the CRC-32C of the output. Advice
// only: memory already touched keeps its pages, errors are ignored.
void advise_huge_pages(void* p, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (n < (size_t(4) << 20)) return;
  static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + n) & ~(page - 1);
  if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)n;
#endif
}

nb::dict parse(nb::handle blob, bool check_crc) {
  Buffer in(blob, false, "blob");
  Aligned a(in);
  BlobInfo info;
  {
    nb::gil_scoped_release nogil;
    info = parse_v2(a.p, in.size(), check_crc);
  }
  return info_dict(info);
}

void decode(nb::handle blob, nb::handle out, int threads, bool check_blob_crc, bool check_data_crc) {
  Buffer in(blob, false, "blob");
  Buffer o(out, true, "out");
  Aligned a(in);
  threads = threads_or_default(threads);
  nb::gil_scoped_release nogil;
  BlobInfo info = parse_v2(a.p, in.size(), check_blob_crc);
  if (o.size() != info.numel * info.layout->itemsize()) throw FormatError("out does not hold the tensor");
  if (reinterpret_cast<uintptr_t>(o.data()) % info.layout->itemsize()) throw FormatError("out is not aligned");
  advise_huge_pages(o.data(), o.size());
  decode_v2(a.p, info, o.data(), threads, check_data_crc);
}

void decode_tiles(nb::handle blob, uint32_t first, uint32_t count, nb::handle out, int threads) {
  Buffer in(blob, false, "blob");
  Buffer o(out, true, "out");
  Aligned a(in);
  threads = threads_or_default(threads);
  nb::gil_scoped_release nogil;
  BlobInfo info = parse_v2(a.p, in.size(), false);
  if (first > info.n_tiles || count > info.n_tiles - first) throw FormatError("tile range out of bounds");
  uint64_t elems = 0;
  for (uint32_t t = first; t < first + count; ++t) elems += info.tile_elements(t);
  if (o.size() != elems * info.layout->itemsize()) throw FormatError("out does not hold the tiles");
  if (reinterpret_cast<uintptr_t>(o.data()) % info.layout->itemsize()) throw FormatError("out is not aligned");
  advise_huge_pages(o.data(), o.size());
  decode_v2_tiles(a.p, info, first, count, o.data(), threads);
}

void decode_v1_py(nb::handle codes, nb::handle raw, nb::handle tile_words, nb::handle lane_bits, nb::handle lengths,
                  uint64_t numel, uint32_t lanes, uint32_t steps, uint32_t shift, uint32_t sym_bits, int bits,
                  nb::handle out, int threads) {
  Buffer c(codes, false, "codes"), r(raw, false, "raw"), tw(tile_words, false, "tile_words"),
      lb(lane_bits, false, "lane_bits"), ln(lengths, false, "lengths"), o(out, true, "out");
  if (bits != 8 && bits != 16 && bits != 32) throw nb::value_error("bits must be 8, 16 or 32");
  if (sym_bits > 12 || ln.size() != (size_t(1) << sym_bits)) throw nb::value_error("lengths do not match sym_bits");
  if (o.size() != numel * size_t(bits / 8)) throw nb::value_error("out does not hold the tensor");
  for (const Buffer* b : {&c, &r, &tw}) {
    if (reinterpret_cast<uintptr_t>(b->data()) % 4) throw nb::value_error("streams must be 4-byte aligned");
  }
  if (reinterpret_cast<uintptr_t>(lb.data()) % 2 || reinterpret_cast<uintptr_t>(o.data()) % size_t(bits / 8))
    throw nb::value_error("arrays must be aligned");
  V1Streams s{reinterpret_cast<const uint32_t*>(c.data()),     c.size() / 4,
              reinterpret_cast<const uint32_t*>(r.data()),     r.size() / 4,
              reinterpret_cast<const uint32_t*>(tw.data()),    tw.size() / 4,
              reinterpret_cast<const uint16_t*>(lb.data()),    lb.size() / 2,
              numel,
              lanes,
              steps,
              shift,
              sym_bits,
              bits};
  threads = threads_or_default(threads);
  nb::gil_scoped_release nogil;
  decode_v1(s, ln.data(), o.data(), threads);
}

uint32_t crc32c_py(nb::handle data, uint32_t crc, const std::string& path) {
  Buffer in(data, false, "data");
  if (path == "auto") {
    nb::gil_scoped_release nogil;
    return crc32c(crc, in.data(), in.size());
  }
  CrcPath p;
  if (path == "portable") {
    p = CrcPath::Portable;
  } else if (path == "instruction" && crc32c_hardware()) {
    p = CrcPath::Instruction;
  } else if (path == "fold" && crc32c_fold_available()) {
    p = CrcPath::Fold;
  } else {
    throw nb::value_error(("CRC-32C path " + path + " is unknown or this CPU lacks what it needs").c_str());
  }
  nb::gil_scoped_release nogil;
  return crc32c_path(crc, in.data(), in.size(), p);
}

std::vector<std::string> crc32c_paths() {
  std::vector<std::string> out{"portable"};
  if (crc32c_hardware()) out.push_back("instruction");
  if (crc32c_fold_available()) out.push_back("fold");
  return out;
}

nb::bytes code_lengths_py(std::vector<uint64_t> counts, int max_len) {
  if (max_len < 1 || max_len > 32) throw nb::value_error("max_len must be in [1, 32]");
  size_t used = 0;
  for (uint64_t c : counts) used += c != 0;
  if (used > (size_t(1) << max_len)) throw nb::value_error("too many symbols for the length limit");
  std::vector<uint8_t> out(counts.size());
  code_lengths(counts.data(), counts.size(), max_len, out.data());
  return nb::bytes(reinterpret_cast<const char*>(out.data()), out.size());
}

// The decode tables a GPU batch needs: primary (4096 u32), long patterns (u32) and the long-code limits and
// offsets (17 each), for one code.
nb::tuple tables_py(nb::handle lengths, uint32_t shift, int bits) {
  Buffer ln(lengths, false, "lengths");
  Tables tb = build_tables(ln.data(), ln.size(), shift, bits);
  std::vector<uint32_t> limit(tb.longc.limit, tb.longc.limit + MAX_CODE_LEN + 1);
  std::vector<int64_t> offset(tb.longc.offset, tb.longc.offset + MAX_CODE_LEN + 1);
  return nb::make_tuple(
      nb::bytes(reinterpret_cast<const char*>(tb.primary.data()), 4 * tb.primary.size()),
      nb::bytes(reinterpret_cast<const char*>(tb.long_pattern.data()), 4 * tb.long_pattern.size()),
      nb::bytes(reinterpret_cast<const char*>(limit.data()), 4 * limit.size()),
      nb::bytes(reinterpret_cast<const char*>(offset.data()), 8 * offset.size()), tb.longc.max_len);
}

// The decode table of one low plane's code (256 lengths): 4096 16-bit entries, as the kernel reads them.
nb::bytes plane_table_py(nb::handle lengths) {
  Buffer ln(lengths, false, "lengths");
  if (ln.size() != PLANE_SYMBOLS) throw nb::value_error("a plane table has 256 lengths");
  for (size_t s = 0; s < PLANE_SYMBOLS; ++s)
    if (ln.data()[s] > PLANE_MAX_LEN) throw nb::value_error("a plane code is longer than 12 bits");
  std::vector<uint16_t> t = build_plane_table(ln.data());
  return nb::bytes(reinterpret_cast<const char*>(t.data()), 2 * t.size());
}

// Start and end bit of each lane of tile t.
nb::tuple lane_starts_py(nb::handle blob, uint32_t t) {
  Buffer in(blob, false, "blob");
  Aligned a(in);
  BlobInfo info = parse_v2(a.p, in.size(), false);
  if (t >= info.n_tiles) throw nb::index_error("no such tile");
  std::vector<uint64_t> at = delta_offsets(a.p, info);
  std::vector<uint64_t> start(LANES), end(LANES);
  lane_starts(a.p, info, t, at[t], start.data(), end.data());
  return nb::make_tuple(start, end);
}

// The arrays of a decode batch from Python buffers, checked for size and alignment. `out` and `errors` may be
// None (validation only: then `out_bytes` and the tile count stand for them).
struct BatchBuffers {
  Buffer jobs, tiles, codes, raw, deltas, primaries, longcs, long_patterns, long_at;
  std::unique_ptr<Buffer> out, errors;
  BatchArrays a;
  BatchSizes n;
  BatchBuffers(nb::handle jobs_, nb::handle tiles_, nb::handle codes_, nb::handle raw_, nb::handle deltas_,
               nb::handle primaries_, nb::handle longcs_, nb::handle long_patterns_, nb::handle long_at_,
               nb::handle out_, nb::handle errors_, size_t out_bytes)
      : jobs(jobs_, false, "jobs"), tiles(tiles_, false, "tiles"), codes(codes_, false, "codes"),
        raw(raw_, false, "raw"), deltas(deltas_, false, "deltas"), primaries(primaries_, false, "primaries"),
        longcs(longcs_, false, "longcs"), long_patterns(long_patterns_, false, "long_patterns"),
        long_at(long_at_, false, "long_at") {
    if (!out_.is_none()) out = std::make_unique<Buffer>(out_, true, "out");
    if (!errors_.is_none()) errors = std::make_unique<Buffer>(errors_, true, "errors");
    std::vector<const Buffer*> all = {&jobs, &tiles, &codes, &raw, &deltas, &primaries, &longcs, &long_patterns, &long_at};
    if (out) all.push_back(out.get());
    if (errors) all.push_back(errors.get());
    for (const Buffer* b : all) {
      if (reinterpret_cast<uintptr_t>(b->data()) % 16 && b->size()) throw nb::value_error("batch arrays must be 16-aligned");
    }
    const size_t n_tiles = tiles.size() / sizeof(TileDesc);
    if (jobs.size() % sizeof(JobDesc) || tiles.size() % sizeof(TileDesc) || longcs.size() % sizeof(LongCodes) ||
        primaries.size() % (4 << PRIMARY_BITS) || primaries.size() / (4 << PRIMARY_BITS) < longcs.size() / sizeof(LongCodes) ||
        long_at.size() != 8 * (longcs.size() / sizeof(LongCodes)) || (errors && errors->size() != 4 * n_tiles))
      throw nb::value_error("batch array sizes do not match");
    n = BatchSizes{jobs.size() / sizeof(JobDesc), n_tiles, codes.size() / 4, raw.size() / 4,
                   deltas.size() / 4, long_patterns.size() / 4, longcs.size() / sizeof(LongCodes),
                   out ? out->size() : out_bytes, primaries.size() / (4 << PRIMARY_BITS)};
    if (n.codes == 0) throw nb::value_error("empty code stream");
    a = BatchArrays{reinterpret_cast<const JobDesc*>(jobs.data()), reinterpret_cast<const TileDesc*>(tiles.data()),
                    reinterpret_cast<const u32*>(codes.data()), n.codes - 1,
                    reinterpret_cast<const u32*>(raw.data()), reinterpret_cast<const u32*>(deltas.data()),
                    reinterpret_cast<const u32*>(primaries.data()), reinterpret_cast<const LongCodes*>(longcs.data()),
                    reinterpret_cast<const u32*>(long_patterns.data()), reinterpret_cast<const u64*>(long_at.data()),
                    out ? out->data() : nullptr, errors ? reinterpret_cast<u32*>(errors->data()) : nullptr};
  }
};

void validate_batch_py(nb::handle jobs, nb::handle tiles, nb::handle codes, nb::handle raw, nb::handle deltas,
                       nb::handle primaries, nb::handle longcs, nb::handle long_patterns, nb::handle long_at,
                       size_t out_bytes, int bits, uint32_t planes) {
  BatchBuffers b(jobs, tiles, codes, raw, deltas, primaries, longcs, long_patterns, long_at, nb::none(), nb::none(),
                 out_bytes);
  try {
    validate_batch(b.a, b.n, bits, planes);
  } catch (const std::invalid_argument& e) {
    throw nb::value_error(e.what());
  }
}

void decode_batch_host_py(nb::handle jobs, nb::handle tiles, nb::handle codes, nb::handle raw, nb::handle deltas,
                          nb::handle primaries, nb::handle longcs, nb::handle long_patterns, nb::handle long_at,
                          nb::handle out, nb::handle errors, int bits, uint32_t r, bool long_codes, int threads) {
  if (out.is_none() || errors.is_none()) throw nb::value_error("out and errors are needed");
  BatchBuffers b(jobs, tiles, codes, raw, deltas, primaries, longcs, long_patterns, long_at, out, errors, 0);
  try {
    validate_batch(b.a, b.n, bits, bits == 32 ? r : 0);
  } catch (const std::invalid_argument& e) {
    throw nb::value_error(e.what());
  }
  threads = threads_or_default(threads);
  nb::gil_scoped_release nogil;
  decode_batch_host(b.a, b.n.jobs, bits, r, long_codes, threads);
}

// The fused GEMV's arrays beside a decode batch's. x, partials and y may be None (validation only: then
// x_len, partials_len and y_len stand for them).
struct GemvBuffers {
  Buffer seg_base, row_seg;
  std::unique_ptr<Buffer> x, partials, y;
  GemvArrays g;
  GemvSizes s;
  GemvBuffers(nb::handle x_, nb::handle seg_base_, nb::handle row_seg_, nb::handle partials_, nb::handle y_,
              uint64_t in, uint64_t rows, uint32_t nbatch, int path, size_t x_len, size_t partials_len, size_t y_len)
      : seg_base(seg_base_, false, "seg_base"), row_seg(row_seg_, false, "row_seg") {
    if (!x_.is_none()) x = std::make_unique<Buffer>(x_, false, "x");
    if (!partials_.is_none()) partials = std::make_unique<Buffer>(partials_, true, "partials");
    if (!y_.is_none()) y = std::make_unique<Buffer>(y_, true, "y");
    std::vector<const Buffer*> all = {&seg_base, &row_seg};
    for (const auto* b : {x.get(), partials.get(), y.get()}) if (b) all.push_back(b);
    for (const Buffer* b : all) {
      if (reinterpret_cast<uintptr_t>(b->data()) % 16 && b->size()) throw nb::value_error("GEMV arrays must be 16-aligned");
      if (b->size() % 4) throw nb::value_error("GEMV arrays hold 4- or 8-byte elements");
    }
    if (seg_base.size() % 8 || row_seg.size() % 8) throw nb::value_error("segment tables are uint64");
    s = GemvSizes{x ? x->size() / 4 : x_len, seg_base.size() / 8, row_seg.size() / 8,
                  partials ? partials->size() / 4 : partials_len, y ? y->size() / 4 : y_len, in, rows, nbatch, path};
    g = GemvArrays{x ? reinterpret_cast<const float*>(x->data()) : nullptr,
                   reinterpret_cast<const u64*>(seg_base.data()), reinterpret_cast<const u64*>(row_seg.data()),
                   partials ? reinterpret_cast<float*>(partials->data()) : nullptr,
                   y ? reinterpret_cast<float*>(y->data()) : nullptr};
  }
};

void validate_gemv_py(nb::handle jobs, nb::handle tiles, nb::handle codes, nb::handle raw, nb::handle deltas,
                      nb::handle primaries, nb::handle longcs, nb::handle long_patterns, nb::handle long_at,
                      nb::handle seg_base, nb::handle row_seg, uint64_t in, uint64_t rows, uint32_t nbatch, int path,
                      size_t x_len, size_t partials_len, size_t y_len) {
  // W is never written: its tiles' "output" is W's extent, rows * in 16-bit words
  BatchBuffers b(jobs, tiles, codes, raw, deltas, primaries, longcs, long_patterns, long_at, nb::none(), nb::none(),
                 2 * rows * in);
  GemvBuffers gb(nb::none(), seg_base, row_seg, nb::none(), nb::none(), in, rows, nbatch, path, x_len, partials_len,
                 y_len);
  try {
    validate_gemv(b.a, b.n, gb.g, gb.s);
  } catch (const std::invalid_argument& e) {
    throw nb::value_error(e.what());
  }
}

void gemv_host_py(nb::handle jobs, nb::handle tiles, nb::handle codes, nb::handle raw, nb::handle deltas,
                  nb::handle primaries, nb::handle longcs, nb::handle long_patterns, nb::handle long_at, nb::handle x,
                  nb::handle seg_base, nb::handle row_seg, nb::handle partials, nb::handle y, nb::handle errors,
                  uint64_t in, uint64_t rows, uint32_t nbatch, int path, uint32_t r, bool long_codes, bool f16,
                  int threads) {
  if (x.is_none() || partials.is_none() || y.is_none() || errors.is_none())
    throw nb::value_error("x, partials, y and errors are needed");
  BatchBuffers b(jobs, tiles, codes, raw, deltas, primaries, longcs, long_patterns, long_at, nb::none(), errors,
                 2 * rows * in);
  GemvBuffers gb(x, seg_base, row_seg, partials, y, in, rows, nbatch, path, 0, 0, 0);
  try {
    validate_gemv(b.a, b.n, gb.g, gb.s);
  } catch (const std::invalid_argument& e) {
    throw nb::value_error(e.what());
  }
  threads = threads_or_default(threads);
  nb::gil_scoped_release nogil;
  gemv_host(b.a, b.n, gb.g, gb.s, r, long_codes, f16, threads);
}

// The long-code table of one code as the bytes of the LongCodes struct the kernel reads.
nb::bytes longcodes_bytes(nb::handle lengths, uint32_t shift, int bits) {
  Buffer ln(lengths, false, "lengths");
  Tables tb = build_tables(ln.data(), ln.size(), shift, bits);
  return nb::bytes(reinterpret_cast<const char*>(&tb.longc), sizeof(LongCodes));
}

void df11_decode_py(nb::handle stream, uint64_t n_bits, nb::handle gaps, uint64_t window_bits, uint32_t tpb,
                    nb::handle luts, nb::handle lens, int link_min, nb::handle positions, nb::handle sign_mantissa,
                    nb::handle out, nb::handle firsts, nb::handle ends, nb::handle bad, nb::handle block_ends) {
  Buffer st(stream, false, "stream"), gp(gaps, false, "gaps"), lu(luts, false, "luts"), le(lens, false, "lens"),
      po(positions, false, "positions"), sm(sign_mantissa, false, "sign_mantissa"), o(out, true, "out"),
      fi(firsts, true, "firsts"), en(ends, true, "ends"), ba(bad, true, "bad"), be(block_ends, true, "block_ends");
  const uint64_t n_windows = gp.size() / 8;
  if (gp.size() % 8 || po.size() % 8 || lu.size() % 256 || le.size() != 256 || o.size() % 2)
    throw nb::value_error("bad DF11 array sizes");
  const uint64_t n = o.size() / 2, n_positions = po.size() / 8;
  if (sm.size() < n || fi.size() != 8 * n_windows || en.size() != 8 * n_windows || ba.size() != 8 * n_windows ||
      n_positions < 1 || be.size() != 8 * (n_positions - 1))
    throw nb::value_error("DF11 array sizes do not match");
  for (const Buffer* b : {&gp, &po, &fi, &en, &ba, &be})
    if (reinterpret_cast<uintptr_t>(b->data()) % 8) throw nb::value_error("DF11 arrays must be 8-byte aligned");
  if (reinterpret_cast<uintptr_t>(o.data()) % 2) throw nb::value_error("out must be 2-byte aligned");
  Df11Args a{st.data(), st.size(), n_bits, reinterpret_cast<const int64_t*>(gp.data()), n_windows, window_bits, tpb,
             lu.data(), uint32_t(lu.size() / 256), le.data(), link_min,
             reinterpret_cast<const int64_t*>(po.data()), n_positions, sm.data(),
             reinterpret_cast<uint16_t*>(o.data()), n, reinterpret_cast<int64_t*>(fi.data()),
             reinterpret_cast<int64_t*>(en.data()), reinterpret_cast<int64_t*>(ba.data()),
             reinterpret_cast<int64_t*>(be.data()), default_threads()};
  try {
    nb::gil_scoped_release nogil;
    df11_decode(a);
  } catch (const std::invalid_argument& e) {
    throw FormatError(e.what());
  }
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "floatzip's compiled core: the v2 encoder, the v1 and v2 CPU decoders, the blob parser, CRC-32C.";
  nb::exception<fz::FormatError>(m, "FormatError", PyExc_ValueError);
  nb::exception<fz::IntegrityError>(m, "IntegrityError", PyExc_ValueError);
  m.attr("LANES") = LANES;
  m.attr("PRIMARY_BITS") = PRIMARY_BITS;
  m.attr("MAX_CODE_LEN") = MAX_CODE_LEN;
  m.attr("MAX_STEPS") = MAX_STEPS;
  m.attr("CODE_PAD_WORDS") = CODE_PAD_WORDS;
  m.attr("RAW_PAD_WORDS") = RAW_PAD_WORDS;
  m.def("compress", &compress, nb::arg("words"), nb::arg("dtype_code"), nb::arg("shape"), nb::arg("steps"),
        nb::arg("max_code_len") = 16, nb::arg("threads") = 0, nb::arg("max_tables") = 0, nb::arg("planes") = -1,
        "Encode a tensor's words as a v2 blob (v3 with coded low planes).\n\nmax_tables: at most this many code\n"
        "tables (0: the encoder's choice of up to 16; 1: one code for the tensor). planes (F32): the low byte\n"
        "planes to code, -1: the encoder's choice by coded size.");
  m.def("parse", &parse, nb::arg("blob"), nb::arg("check_crc") = true, "Parse and validate a v2 or v3 blob.");
  m.def("decode", &decode, nb::arg("blob"), nb::arg("out"), nb::arg("threads") = 0, nb::arg("check_blob_crc") = false,
        nb::arg("check_data_crc") = true, "Decode a v2 blob into `out` (numel words).");
  m.def("decode_tiles", &decode_tiles, nb::arg("blob"), nb::arg("first"), nb::arg("count"), nb::arg("out"),
        nb::arg("threads") = 0, "Decode tiles [first, first + count) of a v2 blob.");
  m.def("decode_v1", &decode_v1_py, nb::arg("codes"), nb::arg("raw"), nb::arg("tile_words"), nb::arg("lane_bits"),
        nb::arg("lengths"), nb::arg("numel"), nb::arg("lanes"), nb::arg("steps"), nb::arg("shift"),
        nb::arg("sym_bits"), nb::arg("bits"), nb::arg("out"), nb::arg("threads") = 0, "Decode v1 streams.");
  m.def("crc32c", &crc32c_py, nb::arg("data"), nb::arg("crc") = 0, nb::arg("path") = "auto",
        "CRC-32C of a buffer (chaining like zlib.crc32); path: auto or one of crc32c_paths().");
  m.def("crc32c_paths", &crc32c_paths, "The CRC-32C implementations this CPU can run.");
  m.def("code_lengths", &code_lengths_py, nb::arg("counts"), nb::arg("max_len") = 16,
        "Optimal code lengths of at most max_len bits.");
  m.def("tables", &tables_py, nb::arg("lengths"), nb::arg("shift"), nb::arg("bits"),
        "Decode tables (primary, long patterns, limits, offsets, max length) for one code.");
  m.def("plane_table", &plane_table_py, nb::arg("lengths"),
        "The decode table (4096 entries (byte << 8) | length) of one low plane's code.");
  m.attr("MAX_PLANES") = MAX_PLANES;
  m.attr("PLANE_MAX_LEN") = PLANE_MAX_LEN;
  m.def("lane_starts", &lane_starts_py, nb::arg("blob"), nb::arg("tile"), "Start and end bit of each lane of a tile.");
  m.def("default_threads", &default_threads, "Threads the core uses by default.");
  m.def("df11_decode", &df11_decode_py, nb::arg("stream"), nb::arg("n_bits"), nb::arg("gaps"), nb::arg("window_bits"),
        nb::arg("tpb"), nb::arg("luts"), nb::arg("lens"), nb::arg("link_min"), nb::arg("positions"),
        nb::arg("sign_mantissa"), nb::arg("out"), nb::arg("firsts"), nb::arg("ends"), nb::arg("bad"),
        nb::arg("block_ends"), "The decode pass of one DF11 block (every index bounded by the arrays' sizes).");
  m.attr("WARPS") = WARPS;
  m.attr("TILE_DESC_BYTES") = sizeof(TileDesc);
  m.attr("JOB_DESC_BYTES") = sizeof(JobDesc);
  m.attr("LONG_CODES_BYTES") = sizeof(LongCodes);
  m.def("longcodes_bytes", &longcodes_bytes, nb::arg("lengths"), nb::arg("shift"), nb::arg("bits"),
        "The long-code table of one code, as the kernel's LongCodes struct.");
  m.def("validate_batch", &validate_batch_py, nb::arg("jobs"), nb::arg("tiles"), nb::arg("codes"), nb::arg("raw"),
        nb::arg("deltas"), nb::arg("primaries"), nb::arg("longcs"), nb::arg("long_patterns"), nb::arg("long_at"),
        nb::arg("out_bytes"), nb::arg("bits"), nb::arg("planes") = 0,
        "Check every index a decode batch's kernel reads by (planes: the F32 kernel's coded low planes).");
  m.def("decode_batch_host", &decode_batch_host_py, nb::arg("jobs"), nb::arg("tiles"), nb::arg("codes"),
        nb::arg("raw"), nb::arg("deltas"), nb::arg("primaries"), nb::arg("longcs"), nb::arg("long_patterns"),
        nb::arg("long_at"), nb::arg("out"), nb::arg("errors"), nb::arg("bits"), nb::arg("r"), nb::arg("long_codes"),
        nb::arg("threads") = 0,
        "Decode a batch's arrays on the CPU exactly as the decode kernel does on the GPU (r: the raw width of a\n"
        "16-bit kernel, the coded low planes of the F32 one).");
  m.attr("GEMV_MAX_BATCH") = GEMV_MAX_BATCH;
  m.def("validate_gemv", &validate_gemv_py, nb::arg("jobs"), nb::arg("tiles"), nb::arg("codes"), nb::arg("raw"),
        nb::arg("deltas"), nb::arg("primaries"), nb::arg("longcs"), nb::arg("long_patterns"), nb::arg("long_at"),
        nb::arg("seg_base"), nb::arg("row_seg"), nb::arg("in_features"), nb::arg("rows"), nb::arg("batch"),
        nb::arg("path"), nb::arg("x_len"), nb::arg("partials_len"), nb::arg("y_len"),
        "Check every index the fused GEMV kernel reads by.");
  m.def("gemv_host", &gemv_host_py, nb::arg("jobs"), nb::arg("tiles"), nb::arg("codes"), nb::arg("raw"),
        nb::arg("deltas"), nb::arg("primaries"), nb::arg("longcs"), nb::arg("long_patterns"), nb::arg("long_at"),
        nb::arg("x"), nb::arg("seg_base"), nb::arg("row_seg"), nb::arg("partials"), nb::arg("y"), nb::arg("errors"),
        nb::arg("in_features"), nb::arg("rows"), nb::arg("batch"), nb::arg("path"), nb::arg("r"),
        nb::arg("long_codes"), nb::arg("f16"), nb::arg("threads") = 0,
        "The fused GEMV (Y = X W^T) of a one-tensor batch on the CPU, exactly as the kernel computes it.");
}
