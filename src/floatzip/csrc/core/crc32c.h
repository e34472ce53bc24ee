// CRC-32C (Castagnoli, reflected, as in iSCSI and ext4): the checksums of format v2. The CPU's own
// instruction computes it where there is one (SSE4.2 on x86-64, the CRC extension on AArch64), tables elsewhere.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fz {

// crc32c(0, data, n) is the CRC-32C of data; it chains: crc32c(crc32c(0, A), B) is the CRC of A + B.
uint32_t crc32c(uint32_t crc, const uint8_t* data, size_t n);
// The same, table-driven only (the reference the fast paths are tested against).
uint32_t crc32c_portable(uint32_t crc, const uint8_t* data, size_t n);
// The CRC of A + B from crc(A), crc(B) and len(B).
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
// The CRC of n parts laid end to end from their CRCs: every part part_len bytes long but the last (last_len).
uint32_t crc32c_join(const uint32_t* crcs, size_t n, uint64_t part_len, uint64_t last_len);
// crc32c(crc, data, n) for a large buffer: one slice per thread, combined.
uint32_t crc32c_parallel(uint32_t crc, const uint8_t* data, size_t n, int threads);
// True when crc32c() uses the CPU's instruction.
bool crc32c_hardware();
// True when crc32c() folds long buffers with carry-less multiplies (x86-64 with AVX-512 and VPCLMULQDQ).
bool crc32c_fold_available();

// One implementation by name, for the tests (each must equal the portable one); the caller checks that
// the CPU has what the path needs.
enum class CrcPath { Portable, Instruction, Fold };
uint32_t crc32c_path(uint32_t crc, const uint8_t* data, size_t n, CrcPath path);

}  // namespace fz
