"""GPU decoding of format v2 and v3 with floatzip's CUDA kernel (src/floatzip/csrc/fz_decode.cu, compiled by NVRTC).

Two levels:

* :func:`prepare` lays several :class:`CompressedTensor` out as one device-resident :class:`DeviceBatch`
  (done once, when a transformer block is loaded), and :func:`decode_batch` decodes the whole batch into a
  caller-supplied buffer with one launch per kernel specialisation (usually one), on the current stream,
  with no host synchronisation and no allocation: safe inside a CUDA graph capture;
* :func:`decompress` (one tensor) for convenience: it allocates, synchronises, and raises
  :class:`IntegrityError` when a tile does not decode.

:func:`host_batch` builds the same arrays in host memory and :func:`emulate` decodes them on the CPU exactly
as the kernel does (the compiled core runs the kernel's own per-tile and per-lane code), so the tests check
every byte the GPU would see without a GPU. The kernels are compiled for the device's architecture on first
use and cached on disk (``FLOATZIP_CACHE``, default ``~/.cache/floatzip``).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from floatzip import _core
from floatzip.decode import _nvrtc
from floatzip.errors import BackendError, InputError, IntegrityError
from floatzip.format.blob import CompressedTensor
from floatzip.format.spec import LANES, align

if TYPE_CHECKING:
    import torch

OUT_ALIGN = 256
"""Default alignment, in bytes, of each tensor's output in a batch buffer (the kernel needs 16)."""

PRIMARY = 1 << int(_core.PRIMARY_BITS)
TILE_DTYPE = np.dtype(
    [("code_bit", "<u8"), ("raw_word", "<u8"), ("out_byte", "<u8"), ("delta_word", "<u8"),
     ("lanes", "<u4"), ("full_steps", "<u4"), ("tail", "<u4"), ("shift", "<u4")]
)  # fmt: skip
JOB_DTYPE = np.dtype([("first_tile", "<u4"), ("n_tiles", "<u4"), ("code", "<u4"), ("planes_at", "<u4")])
assert TILE_DTYPE.itemsize == _core.TILE_DESC_BYTES and JOB_DTYPE.itemsize == _core.JOB_DESC_BYTES
WARPS = int(_core.WARPS)
ARRAYS = ("jobs", "tiles", "codes", "raw", "deltas", "primaries", "longcs", "long_patterns", "long_at")


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a batch: jobs [first_job, first_job + n_jobs) of one specialisation."""

    bits: int
    raw_bits: int  # the specialisation's compile-time raw width (16-bit dtypes; 0: any)
    long_codes: bool
    first_job: int
    n_jobs: int
    planes: int = 0  # F32: the coded low planes (docs/FORMAT.md §1.7), fixed at compile time

    @property
    def variant(self) -> int:
        """The kernel's compile-time variant R: the raw width for 16 bits, the planes for 32."""
        return self.planes if self.bits == 32 else self.raw_bits

    @property
    def kernel(self) -> str:
        return _nvrtc.decode_kernel_name(self.bits, self.raw_bits, self.long_codes, self.planes)


@dataclass(eq=False)
class HostBatch:
    """A decode batch's arrays in host memory (see fz_batch.h), and where each tensor's output goes."""

    dtypes: tuple[torch.dtype, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # byte offset of each tensor's output in a batch buffer
    nbytes: int  # bytes a batch buffer must hold
    tile_tensor: npt.NDArray[np.int64]  # tensor index of each tile (for error messages)
    launches: tuple[Launch, ...]
    arrays: dict[str, np.ndarray]

    @property
    def n_tiles(self) -> int:
        return int(self.tile_tensor.size)

    @property
    def n_tensors(self) -> int:
        return len(self.dtypes)

    @property
    def stored_nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


def _tile_index(ct: CompressedTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tile_words, tile_lanes, first delta word of each tile) of a v2 or v3 record."""
    tile_words = ct.section("tile_words")
    tile_lanes = ct.section("tile_lanes")
    widths = (tile_lanes >> 27).astype(np.uint64)
    delta_at = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.uint64) if widths.size else widths
    return tile_words, tile_lanes, delta_at


def host_batch(cts: Sequence[CompressedTensor], *, out_align: int = OUT_ALIGN) -> HostBatch:
    """Lay ``cts`` (format v2 or v3 records) out as one decode batch in host memory."""
    if out_align < 16 or out_align % 16:
        raise InputError(f"out_align must be a multiple of 16, not {out_align}")
    codes: list[np.ndarray] = []
    raws: list[np.ndarray] = []
    deltas: list[np.ndarray] = []
    primaries: list[np.ndarray] = []
    plane_slots: list[np.ndarray] = []  # after the codes' primaries: each v3 table's plane tables, one slot
    longcs: list[bytes] = []
    long_patterns: list[np.ndarray] = []
    long_at: list[int] = []
    tiles: list[np.ndarray] = []
    tile_tensor: list[np.ndarray] = []
    # per tile: (kernel key, code id, tensor, plane slot) in tile order, to group into jobs
    keys: list[tuple[tuple[int, int, bool], int, int, int]] = []
    offsets: list[int] = []
    code_base = raw_base = delta_base = long_base = out_pos = 0
    n_codes = 0
    max_lane_bits = 0  # the most code bits a corrupt lane can read
    for i, ct in enumerate(cts):
        if not ct.tiled:
            raise BackendError(
                f"the GPU decoder reads format v2 and v3 records, not v{ct.version}: compress the checkpoint again"
            )
        out_pos = align(out_pos, out_align)
        offsets.append(out_pos)
        nbytes = ct.original_nbytes
        if ct.numel == 0:
            continue
        info = ct.v2
        bits, group = ct.layout.bits, ct.layout.group
        item = bits // 8
        planes = ct.planes
        elem_bits = int(_core.MAX_CODE_LEN) + int(_core.PLANE_MAX_LEN) * planes
        max_lane_bits = max(max_lane_bits, int(info["steps"]) * group * elem_bits)
        # the codes of each table
        nsym = 1 << ct.sym_bits
        lengths = np.frombuffer(info["lengths"], dtype=np.uint8)
        ids, slots = [], []
        plane_lengths = np.frombuffer(info["plane_lengths"], dtype=np.uint8)
        for t in range(int(info["n_tables"])):
            if planes:  # one slot of 4096 words: the table's plane tables (16-bit entries), in lane order
                entries = np.zeros(2 * PRIMARY, dtype=np.uint16)
                for q in range(planes):
                    at = (t * planes + q) * 256
                    entries[q * PRIMARY : (q + 1) * PRIMARY] = np.frombuffer(
                        _core.plane_table(plane_lengths[at : at + 256]), dtype=np.uint16
                    )
                slots.append(len(plane_slots))
                plane_slots.append(entries.view(np.uint32))
            else:
                slots.append(0)
            table = lengths[t * nsym : (t + 1) * nsym]
            primary, patterns, _limits, _offsets, _max = _core.tables(table, ct.shift, bits)
            primaries.append(np.frombuffer(primary, dtype=np.uint32))
            longcs.append(_core.longcodes_bytes(table, ct.shift, bits))
            pat = np.frombuffer(patterns, dtype=np.uint32)
            long_patterns.append(pat)
            long_at.append(long_base)
            long_base += pat.size
            ids.append(n_codes)
            n_codes += 1
        tile_words, tile_lanes, delta_at = _tile_index(ct)
        n_tiles = int(info["n_tiles"])
        tile_elems = int(info["tile_elems"])
        numel = ct.numel
        m = np.full(n_tiles, tile_elems, dtype=np.int64)
        m[-1] = numel - (n_tiles - 1) * tile_elems
        full_tile_raw = tile_elems * ct.raw_bits // 32
        desc = np.zeros(n_tiles, dtype=TILE_DTYPE)
        desc["code_bit"] = 32 * (code_base + tile_words[:-1].astype(np.uint64))
        desc["raw_word"] = raw_base + np.arange(n_tiles, dtype=np.uint64) * full_tile_raw
        desc["out_byte"] = out_pos + np.arange(n_tiles, dtype=np.uint64) * tile_elems * item
        desc["delta_word"] = delta_base + delta_at
        desc["lanes"] = tile_lanes
        desc["full_steps"] = m // (LANES * group)
        desc["tail"] = m % (LANES * group)
        desc["shift"] = ct.shift | planes << 8
        tiles.append(desc)
        tile_tensor.append(np.full(n_tiles, i, dtype=np.int64))
        table_of = (
            np.frombuffer(ct.to_bytes(), np.uint8, n_tiles, int(info["tile_table_at"]))
            if int(info["n_tables"]) > 1
            else np.zeros(n_tiles, dtype=np.uint8)
        )
        key = (
            bits,
            ct.raw_bits if bits == 16 else planes if bits == 32 else 0,
            ct.max_code_len > int(_core.PRIMARY_BITS),
        )
        keys.extend((key, ids[int(table_of[t])], i, slots[int(table_of[t])]) for t in range(n_tiles))
        c = ct.section("codes")[: int(info["code_words"])]
        r = ct.section("raw")
        d = ct.section("deltas")
        codes.append(c)
        raws.append(r)
        deltas.append(d)
        code_base += c.size
        raw_base += r.size
        delta_base += d.size
        out_pos += nbytes
    # the code stream's padding: a corrupt lane reads at most 16 bits per symbol (and 12 per plane) past its start
    codes.append(np.zeros((max_lane_bits + 31) // 32 + 8, dtype=np.uint32))
    # jobs: runs of up to WARPS consecutive tiles of one code, grouped by kernel
    jobs_by_key: dict[tuple[int, int, bool], list[tuple[int, int, int, int]]] = {}
    t = 0
    while t < len(keys):
        key, code, _, slot = keys[t]
        n = 1
        while n < WARPS and t + n < len(keys) and keys[t + n][:2] == (key, code):
            n += 1
        jobs_by_key.setdefault(key, []).append((t, n, code, slot))
        t += n
    jobs = np.zeros(sum(len(v) for v in jobs_by_key.values()), dtype=JOB_DTYPE)
    launches = []
    at = 0
    for (bits, variant, long_codes), js in jobs_by_key.items():
        planes = variant if bits == 32 else 0
        for k, (first, n, code, slot) in enumerate(js):
            jobs[at + k] = (first, n, code, n_codes + slot if planes else 0)
        launches.append(Launch(bits, variant if bits == 16 else 0, long_codes, at, len(js), planes))
        at += len(js)
    arrays = {
        "jobs": jobs,
        "tiles": np.concatenate(tiles) if tiles else np.zeros(0, dtype=TILE_DTYPE),
        "codes": np.concatenate(codes),
        "raw": np.concatenate(raws) if raws else np.zeros(2, dtype=np.uint32),
        "deltas": np.concatenate(deltas) if deltas else np.zeros(0, dtype=np.uint32),
        "primaries": np.concatenate(primaries + plane_slots) if primaries else np.zeros(0, dtype=np.uint32),
        "longcs": np.frombuffer(b"".join(longcs), dtype=np.uint8).copy(),
        "long_patterns": np.concatenate(long_patterns) if long_patterns else np.zeros(1, dtype=np.uint32),
        "long_at": np.array(long_at, dtype=np.uint64),
    }
    arrays = {k: _aligned_copy(v) for k, v in arrays.items()}
    hb = HostBatch(
        dtypes=tuple(ct.dtype for ct in cts),
        shapes=tuple(ct.shape for ct in cts),
        offsets=tuple(offsets),
        nbytes=align(out_pos, 16),
        tile_tensor=np.concatenate(tile_tensor) if tile_tensor else np.zeros(0, dtype=np.int64),
        launches=tuple(launches),
        arrays=arrays,
    )
    _validate(hb)
    return hb


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    """A contiguous copy of ``a`` whose data starts on a 64-byte boundary (the core wants 16)."""
    raw = np.empty(a.nbytes + 64, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64
    out = raw[start : start + a.nbytes].view(a.dtype)
    out[...] = a.reshape(-1) if a.ndim else a
    return out


def _validate(hb: HostBatch) -> None:
    """Check every index each launch's kernel reads by (the compiled core does the arithmetic)."""
    a = hb.arrays
    for launch in hb.launches:
        jobs = _aligned_copy(a["jobs"][launch.first_job : launch.first_job + launch.n_jobs])
        try:
            _core.validate_batch(jobs, a["tiles"], a["codes"], a["raw"], a["deltas"], a["primaries"], a["longcs"],
                                 a["long_patterns"], a["long_at"], hb.nbytes, launch.bits, launch.planes)  # fmt: skip
        except ValueError as exc:
            raise IntegrityError(f"the decode batch does not hold together: {exc}") from None


def emulate(hb: HostBatch, out: np.ndarray) -> npt.NDArray[np.uint32]:
    """Decode ``hb`` into ``out`` (uint8, ``hb.nbytes``) on the CPU, as the kernels do; the per-tile errors."""
    if out.dtype != np.uint8 or out.size < hb.nbytes or not out.flags.c_contiguous:
        raise InputError(f"out must be a contiguous uint8 array of at least {hb.nbytes} bytes")
    a = hb.arrays
    errors = _aligned_copy(np.zeros(hb.n_tiles, dtype=np.uint32))
    target = out[: hb.nbytes] if hb.nbytes else out
    for launch in hb.launches:
        jobs = _aligned_copy(a["jobs"][launch.first_job : launch.first_job + launch.n_jobs])
        _core.decode_batch_host(jobs, a["tiles"], a["codes"], a["raw"], a["deltas"], a["primaries"], a["longcs"],
                                a["long_patterns"], a["long_at"], target, errors, launch.bits, launch.variant,
                                launch.long_codes)  # fmt: skip
    return errors


def tensor_views(offsets: Sequence[int], dtypes: Sequence[torch.dtype], shapes: Sequence[tuple[int, ...]],
                 buffer: torch.Tensor) -> list[torch.Tensor]:  # fmt: skip
    """Each tensor's output in ``buffer`` (flat uint8), typed and shaped."""
    import torch

    out = []
    for off, dtype, shape in zip(offsets, dtypes, shapes, strict=True):
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        out.append(buffer[off : off + nbytes].view(dtype).view(shape))
    return out


# ---------------------------------------------------------------------------------------------------
# the device


@dataclass(eq=False)
class DeviceBatch:
    """A :class:`HostBatch` resident on a CUDA device (or in host memory, for offload)."""

    device: torch.device
    dtypes: tuple[torch.dtype, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    nbytes: int
    tile_tensor: npt.NDArray[np.int64]
    launches: tuple[Launch, ...]
    tensors: dict[str, torch.Tensor]
    errors: torch.Tensor = field(repr=False)

    @property
    def n_tiles(self) -> int:
        return int(self.tile_tensor.size)

    @property
    def device_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values()) + 4 * self.n_tiles

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        return tensor_views(self.offsets, self.dtypes, self.shapes, buffer)

    def to(self, device: torch.device, *, pin: bool = False, non_blocking: bool = False) -> DeviceBatch:
        """The same batch with its arrays on ``device`` (pinned host memory with ``pin``)."""
        moved = {
            k: (t.cpu().pin_memory() if pin else t.to(device, non_blocking=non_blocking))
            for k, t in self.tensors.items()
        }
        errors = self.errors.cpu().pin_memory() if pin else self.errors.to(device, non_blocking=non_blocking)
        return DeviceBatch(device, self.dtypes, self.shapes, self.offsets, self.nbytes, self.tile_tensor,
                           self.launches, moved, errors)  # fmt: skip

    def check(self) -> None:
        """Raise IntegrityError if the last decode met a tile that does not decode (synchronises)."""
        if self.n_tiles == 0:
            return
        bad = self.errors.cpu().numpy()
        if bad.any():
            tile = int(np.flatnonzero(bad)[0])
            raise IntegrityError(
                f"tensor {int(self.tile_tensor[tile])} of the batch: tile {tile} of the code stream does not decode "
                "(corrupt data)"
            )


def prepare(
    cts: Sequence[CompressedTensor], device: torch.device | str | None = None, *, out_align: int = OUT_ALIGN
) -> DeviceBatch:
    """Lay ``cts`` out as one :class:`DeviceBatch` on ``device`` (one host-to-device copy per array)."""
    return to_device(host_batch(cts, out_align=out_align), _device_of(device))


def to_device(hb: HostBatch, device: torch.device, *, pinned_host: bool = False) -> DeviceBatch:
    """``hb``'s arrays as device tensors (or, with ``pinned_host``, pinned host tensors to copy later)."""
    import torch

    def put(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a.view(np.uint8))
        return t.pin_memory() if pinned_host else t.to(device)

    tensors = {k: put(v) for k, v in hb.arrays.items()}
    errors = put(np.zeros(hb.n_tiles, dtype=np.uint32))
    return DeviceBatch(device, hb.dtypes, hb.shapes, hb.offsets, hb.nbytes, hb.tile_tensor, hb.launches, tensors,
                       errors)  # fmt: skip


def _device_of(device: torch.device | str | None) -> torch.device:
    import torch

    device = torch.device(device) if device is not None else torch.device("cuda")
    if device.type != "cuda":
        raise BackendError(f"the cuda decode backend runs on CUDA devices, not {device}")
    if not torch.cuda.is_available():
        raise BackendError("the cuda decode backend needs a CUDA GPU, and this machine has none")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def decode_batch(batch: DeviceBatch, buffer: torch.Tensor) -> None:
    """Decode ``batch`` into ``buffer`` (flat uint8 on the batch's device, at least ``batch.nbytes``).

    Launches on the current stream; no allocation, no synchronisation (CUDA-graph safe). Corrupt tiles are
    flagged in ``batch.errors``; :meth:`DeviceBatch.check` reads them.
    """
    import torch

    if buffer.device != batch.device or buffer.dtype != torch.uint8 or buffer.numel() < batch.nbytes:
        raise InputError(f"buffer must be a uint8 tensor of at least {batch.nbytes} bytes on {batch.device}")
    if buffer.data_ptr() % 16:
        raise InputError("buffer must be 16-byte aligned")
    if not batch.launches:
        return
    mod = _module(batch.device)
    stream = torch.cuda.current_stream(batch.device).cuda_stream
    t = batch.tensors
    ptr = {k: v.data_ptr() for k, v in t.items()}
    last_code_word = t["codes"].numel() // 4 - 1
    for launch in batch.launches:
        args = [
            ptr["jobs"] + launch.first_job * JOB_DTYPE.itemsize,
            ptr["tiles"],
            ptr["codes"],
            last_code_word,
            ptr["raw"],
            ptr["deltas"],
            ptr["primaries"],
            ptr["longcs"],
            ptr["long_patterns"],
            ptr["long_at"],
            buffer.data_ptr(),
            batch.errors.data_ptr(),
        ]
        mod.launch(launch.kernel, launch.n_jobs, WARPS * 32, args, stream)


CRC_CHUNK = 64 << 20
"""Bytes of device memory copied to the host at a time by :func:`crc32c_of`."""


def crc32c_of(flat: torch.Tensor) -> int:
    """CRC-32C of the bytes of a flat uint8 tensor on any device, copied to the host ``CRC_CHUNK`` at a time
    (the kernel checks that every lane ends where its length says; the data CRC is checked on the host)."""
    crc = 0
    for at in range(0, flat.numel(), CRC_CHUNK):
        crc = _core.crc32c(flat[at : at + CRC_CHUNK].cpu().numpy(), crc)
    return crc


def decompress(
    ct: CompressedTensor,
    device: torch.device | str | None = None,
    *,
    out: torch.Tensor | None = None,
    verify: bool = True,
) -> torch.Tensor:
    """Decode one tensor on the GPU (allocates and synchronises; raises IntegrityError on corrupt data).
    ``verify`` also checks the decoded bytes against the stored CRC-32C (on the host: see :func:`crc32c_of`)."""
    import torch

    device = _device_of(out.device if out is not None else device)
    batch = prepare([ct], device, out_align=16)
    buf = torch.empty(max(batch.nbytes, 16), dtype=torch.uint8, device=device)
    decode_batch(batch, buf)
    torch.cuda.current_stream(device).synchronize()
    batch.check()
    if verify and crc32c_of(buf[: ct.original_nbytes]) != ct.data_crc32:
        raise IntegrityError("the decoded tensor does not match its stored checksum (corrupt data)")
    result = batch.views(buf)[0]
    if out is not None:
        out.copy_(result)
        return out
    return result


# ---------------------------------------------------------------------------------------------------
# the driver: modules compiled by NVRTC, loaded and launched through libcuda


class _Module:
    def __init__(self, cubin: bytes, names: dict[str, str]) -> None:
        self._lib = _libcuda()
        self._module = ctypes.c_void_p()
        _cu(self._lib.cuModuleLoadData(ctypes.byref(self._module), cubin), "cuModuleLoadData")
        self._functions: dict[str, ctypes.c_void_p] = {}
        for expr, mangled in names.items():
            f = ctypes.c_void_p()
            _cu(self._lib.cuModuleGetFunction(ctypes.byref(f), self._module, mangled.encode()), "cuModuleGetFunction")
            self._functions[expr] = f

    def launch(self, kernel: str, grid: int, block: int, args: list[int], stream: int) -> None:
        values = [ctypes.c_uint64(a) for a in args]
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        _cu(
            self._lib.cuLaunchKernel(self._functions[kernel], grid, 1, 1, block, 1, 1, 0, ctypes.c_void_p(stream),
                                     params, None),
            f"launching {kernel}",
        )  # fmt: skip


_MODULES: dict[int, _Module] = {}


def _module(device: torch.device) -> _Module:
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    mod = _MODULES.get(index)
    if mod is None:
        major, minor = torch.cuda.get_device_capability(index)
        with torch.cuda.device(index):
            torch.cuda.init()
            cubin, names = compiled(f"sm_{major}{minor}")
            mod = _MODULES[index] = _Module(cubin, names)
    return mod


def cache_dir() -> Path:
    return Path(os.environ.get("FLOATZIP_CACHE", Path.home() / ".cache" / "floatzip"))


def compiled(arch: str) -> tuple[bytes, dict[str, str]]:
    """Every decode kernel compiled for ``arch``, from the disk cache when the sources have not changed."""
    src = _nvrtc.csrc_dir()
    h = hashlib.sha256()
    for name in ("fz_lane.h", "fz_batch.h", _nvrtc.SOURCE):
        h.update((src / name).read_bytes())
    h.update(repr((arch, _nvrtc.version(), _nvrtc.DECODER_OPTIONS, _nvrtc.decode_kernel_names())).encode())
    key = h.hexdigest()[:24]
    path = cache_dir() / f"decode-{arch}-{key}.cubin"
    names_path = path.with_suffix(".names")
    if path.is_file() and names_path.is_file():
        lines = names_path.read_text().splitlines()
        pairs = [line.split("\t", 1) for line in lines if "\t" in line]
        return path.read_bytes(), {k: v for k, v in pairs}
    c = _nvrtc.compile_decoder(arch)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(c.cubin)
        names_path.with_suffix(f".{os.getpid()}.tmp").write_text("".join(f"{k}\t{v}\n" for k, v in c.names.items()))
        names_path.with_suffix(f".{os.getpid()}.tmp").replace(names_path)
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: compile again next time
    return c.cubin, c.names


def _libcuda() -> Any:
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise BackendError(f"the CUDA driver (libcuda.so.1) could not be loaded: {exc}") from None


def _cu(result: int, what: str) -> None:
    if result != 0:
        lib = _libcuda()
        msg = ctypes.c_char_p()
        lib.cuGetErrorString(result, ctypes.byref(msg))
        raise BackendError(f"CUDA error in {what}: {(msg.value or b'?').decode()}")
