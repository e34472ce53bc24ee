"""GPU decoding with Triton: one program per tile, many tensors per launch (docs/FORMAT.md §1.4).

Two levels:

* :func:`prepare` packs the streams and tables of several :class:`CompressedTensor` into one
  device-resident :class:`DeviceBatch` (done once, e.g. when a transformer block is loaded), and
  :func:`decode_batch` decodes the whole batch in one launch into a caller-supplied flat buffer, on the
  current stream, with no host synchronisation and no allocation (the hot path);
* :func:`decompress` (one tensor) and :func:`decompress_many` (several, one launch) for convenience:
  they allocate, synchronise and raise :class:`IntegrityError` when a stream does not decode.

The kernels run compiled on CUDA devices, or in Triton's interpreter on the CPU when the environment
variable ``TRITON_INTERPRET=1`` is set before ``triton`` is first imported (slow: for tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from floatzip.decode import check_out
from floatzip.errors import BackendError, InputError, IntegrityError
from floatzip.format.spec import MAX_CODE_LEN
from floatzip.format.tensor import CompressedTensor

try:
    from triton.runtime.interpreter import InterpretedFunction

    from floatzip.decode import _triton_kernels as _k
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise BackendError(f"the triton decode backend needs Triton ({exc})") from exc

INTERPRETED: bool = isinstance(_k.decode_tiles_kernel, InterpretedFunction)
"""True when the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` at import time)."""

OUT_ALIGN = 256
"""Default alignment, in bytes, of each tensor's output in a batch buffer."""

_DESC_COLS = int(_k.DESC_COLS.value)
_PRIMARY = int(_k.PRIMARY_STRIDE.value)
_LIMITS = int(_k.LIMITS_STRIDE.value)
_BASE = int(_k.BASE_STRIDE.value)
_SYMBOLS = int(_k.SYMBOLS_STRIDE.value)


@dataclass(eq=False)
class DeviceBatch:
    """Several compressed tensors packed for one decode launch, resident on ``device``.

    Build it with :func:`prepare`; decode it with :func:`decode_batch` as often as needed. Tensor ``i``
    is written at byte ``offsets[i]`` of the output buffer, as ``dtypes[i]`` of shape ``shapes[i]``.
    """

    device: torch.device
    lanes: int
    dtypes: tuple[torch.dtype, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # byte offset of each tensor's output in a batch buffer
    nbytes: int  # bytes a batch buffer must hold
    n_tiles: int
    tile_tensor: npt.NDArray[np.int64]  # tensor index of each tile (host copy, for error messages)
    desc: torch.Tensor  # int64 [n_tiles, DESC_COLS] (see _triton_kernels)
    codes: torch.Tensor  # int32
    raw: torch.Tensor  # int32
    lane_bits: torch.Tensor  # int32 [n_tiles * lanes]
    primary: torch.Tensor  # int32 [n_tensors * 4096]
    limits: torch.Tensor  # int32 [n_tensors * 16]
    base: torch.Tensor  # int32 [n_tensors * 32]
    symbols: torch.Tensor  # int16 [n_tensors * 4096]
    out_offsets: torch.Tensor  # int64 [n_tensors], = offsets, on the device
    errors: torch.Tensor  # int32 [n_tiles], written by every launch: 1 where a tile is corrupt

    @property
    def n_tensors(self) -> int:
        return len(self.dtypes)

    @property
    def device_nbytes(self) -> int:
        """Bytes of device memory the batch itself occupies."""
        parts = (self.desc, self.codes, self.raw, self.lane_bits, self.primary, self.limits, self.base,
                 self.symbols, self.out_offsets, self.errors)  # fmt: skip
        return sum(t.numel() * t.element_size() for t in parts)

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor's output in ``buffer`` (as filled by :func:`decode_batch`), typed and shaped."""
        flat = _byte_view(buffer, self)
        return [
            flat[off : off + math.prod(shape) * _itemsize(dtype)].view(dtype).view(shape)
            for off, dtype, shape in zip(self.offsets, self.dtypes, self.shapes, strict=True)
        ]

    def check(self) -> None:
        """Raise IntegrityError if the last decode met a corrupt stream (synchronises with the device)."""
        if self.n_tiles == 0:
            return
        bad = self.errors.cpu().numpy()
        if bad.any():
            tile = int(np.flatnonzero(bad)[0])
            raise IntegrityError(
                f"tensor {int(self.tile_tensor[tile])} of the batch: tile {tile} of the code stream does not "
                "decode (corrupt data)"
            )


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _check_device(device: torch.device) -> None:
    if device.type == "cuda" or INTERPRETED:
        return
    raise BackendError(
        f"the triton decode backend runs on CUDA devices, not {device}; to run it on the CPU in Triton's "
        "interpreter, set TRITON_INTERPRET=1 before triton is first imported"
    )


def _device_of(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cpu" if INTERPRETED else "cuda")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _host_tables(ct: CompressedTensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tb = ct.tables
    if tb.max_len != MAX_CODE_LEN or tb.limits.size != _LIMITS or tb.primary.size != _PRIMARY:
        raise BackendError(f"the triton kernel decodes codes of at most {_LIMITS} bits, not {tb.max_len}")
    base = np.zeros(_BASE, dtype=np.int32)
    base[: MAX_CODE_LEN + 1] = tb.first_index.astype(np.int64) - tb.first_code.astype(np.int64)
    symbols = np.zeros(_SYMBOLS, dtype=np.int16)
    symbols[: tb.symbols.size] = tb.symbols.astype(np.int16)
    return tb.primary.astype(np.int32), tb.limits.astype(np.int32), base, symbols


def prepare(
    cts: Sequence[CompressedTensor], device: torch.device | str | None = None, *, align: int = OUT_ALIGN
) -> DeviceBatch:
    """Pack ``cts`` into one :class:`DeviceBatch` on ``device`` (one host-to-device copy per array).

    All tensors with elements must share one ``lanes`` value (their ``steps`` may differ); outputs are
    laid out one after another in a buffer of ``batch.nbytes`` bytes, each at a multiple of ``align``.
    """
    dev = _device_of(device)
    _check_device(dev)
    if align < 1 or align & (align - 1):
        raise InputError(f"align must be a power of two, not {align}")
    lanes_used = {ct.lanes for ct in cts if ct.numel}
    if len(lanes_used) > 1:
        raise BackendError(f"a decode batch needs one lanes value for all its tensors, got {sorted(lanes_used)}")
    lanes = lanes_used.pop() if lanes_used else (cts[0].lanes if cts else 32)

    offsets: list[int] = []
    pos = 0
    code_parts: list[np.ndarray] = []
    raw_parts: list[np.ndarray] = []
    lane_parts: list[np.ndarray] = []
    desc_parts: list[np.ndarray] = []
    tables: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    code_base = raw_base = lane_base = 0
    for i, ct in enumerate(cts):
        width = ct.layout.nbytes
        pos = -(-pos // align) * align
        offsets.append(pos)
        pos += ct.numel * width
        tables.append(_host_tables(ct))
        n_tiles, per_tile = ct.n_tiles, ct.lanes * ct.steps
        if n_tiles:
            tw = ct.tile_words.astype(np.int64)
            sums = ct.lane_bits.reshape(n_tiles, ct.lanes).sum(axis=1, dtype=np.int64)
            if (
                tw.size != n_tiles + 1
                or not np.array_equal(np.diff(tw), (sums + 31) // 32)
                or tw[-1] + 1 != ct.codes.size
            ):
                raise IntegrityError(f"tensor {i} of the batch: tile offsets do not match the lane sizes")
            if ct.raw.size != -(-ct.numel * ct.raw_bits // 32) + 1:
                raise IntegrityError(f"tensor {i} of the batch: the raw stream has the wrong length")
            t = np.arange(n_tiles, dtype=np.int64)
            desc = np.empty((n_tiles, _DESC_COLS), dtype=np.int64)
            desc[:, 0] = code_base + tw[:-1]
            desc[:, 1] = lane_base + t * ct.lanes
            desc[:, 2] = raw_base + t * (per_tile * ct.raw_bits // 32)  # per_tile is a multiple of 32
            desc[:, 3] = t * per_tile
            desc[:, 4] = np.minimum(per_tile, ct.numel - t * per_tile)
            desc[:, 5] = i
            desc[:, 6] = ct.steps
            desc[:, 7] = ct.shift | (width << 8)
            desc_parts.append(desc)
        code_parts.append(ct.codes.view(np.int32))
        raw_parts.append(ct.raw.view(np.int32))
        lane_parts.append(ct.lane_bits.astype(np.int32))
        code_base += ct.codes.size
        raw_base += ct.raw.size
        lane_base += ct.lane_bits.size
    # one more zero word: a corrupt lane clamped to the very end of the last stream still reads in bounds
    code_parts.append(np.zeros(1, dtype=np.int32))
    raw_parts.append(np.zeros(1, dtype=np.int32))

    def put(parts: Sequence[np.ndarray], dtype: type, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        arr: np.ndarray = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)
        if shape is not None:
            arr = arr.reshape(shape)
        return torch.from_numpy(np.ascontiguousarray(arr)).to(dev)

    desc_all = np.concatenate(desc_parts) if desc_parts else np.zeros((0, _DESC_COLS), dtype=np.int64)
    n_tiles_all = int(desc_all.shape[0])
    return DeviceBatch(
        device=dev,
        lanes=lanes,
        dtypes=tuple(ct.dtype for ct in cts),
        shapes=tuple(ct.shape for ct in cts),
        offsets=tuple(offsets),
        nbytes=pos,
        n_tiles=n_tiles_all,
        tile_tensor=desc_all[:, 5].copy(),
        desc=torch.from_numpy(desc_all).to(dev),
        codes=put(code_parts, np.int32),
        raw=put(raw_parts, np.int32),
        lane_bits=put(lane_parts, np.int32),
        primary=put([t[0] for t in tables], np.int32),
        limits=put([t[1] for t in tables], np.int32),
        base=put([t[2] for t in tables], np.int32),
        symbols=put([t[3] for t in tables], np.int16),
        out_offsets=torch.tensor(offsets, dtype=torch.int64).to(dev),
        errors=torch.zeros(n_tiles_all, dtype=torch.int32, device=dev),
    )


def _byte_view(buffer: torch.Tensor, batch: DeviceBatch) -> torch.Tensor:
    if buffer.device != batch.device:
        raise InputError(f"the output buffer is on {buffer.device}, the batch on {batch.device}")
    if not buffer.is_contiguous():
        raise InputError("the output buffer must be contiguous")
    flat = buffer.view(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    if flat.numel() < batch.nbytes:
        raise InputError(f"the output buffer holds {flat.numel()} bytes, the batch needs {batch.nbytes}")
    return flat


def default_num_warps(lanes: int) -> int:
    """Warps per program: one lane per thread, between 1 and 8 warps."""
    return max(1, min(8, lanes // 32))


def _launch(
    batch: DeviceBatch, out: torch.Tensor, out_offsets: torch.Tensor, canonical: bool, num_warps: int | None
) -> None:
    if batch.n_tiles == 0:
        return
    warps = default_num_warps(batch.lanes) if num_warps is None else num_warps
    args = (batch.desc, batch.codes, batch.raw, batch.lane_bits, batch.primary, batch.limits, batch.base,
            batch.symbols, out, out_offsets, batch.errors)  # fmt: skip
    kernel = _k.decode_tiles_kernel[(batch.n_tiles,)]
    if batch.device.type == "cuda":
        with torch.cuda.device(batch.device):
            kernel(*args, LANES=batch.lanes, CANONICAL=canonical, num_warps=warps)
    else:
        kernel(*args, LANES=batch.lanes, CANONICAL=canonical, num_warps=warps)


def decode_batch(
    batch: DeviceBatch, out: torch.Tensor, *, canonical: bool = False, num_warps: int | None = None
) -> None:
    """Decode every tensor of ``batch`` into ``out`` in one launch, on the current stream.

    ``out`` is a contiguous buffer of at least ``batch.nbytes`` bytes (any dtype) on the batch's device;
    :meth:`DeviceBatch.views` gives the tensors in it. No host synchronisation, no allocation: corrupt
    streams are only flagged in ``batch.errors``, which :meth:`DeviceBatch.check` reads.
    ``canonical`` picks the symbol decoder (False: 12-bit table, limits for longer codes; True: limits only).
    """
    _launch(batch, _byte_view(out, batch), batch.out_offsets, canonical, num_warps)


def decompress(
    ct: CompressedTensor, device: torch.device | str | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Decode one tensor on ``device`` (default: ``out``'s device), into ``out`` when given.

    Synchronises, and raises IntegrityError when the stream does not decode.
    """
    dev = _device_of(out.device if out is not None else device)
    _check_device(dev)
    if out is None:
        out = torch.empty(ct.shape, dtype=ct.dtype, device=dev)
    check_out(ct, out)
    decompress_many([ct], [out])
    return out


def decompress_many(
    cts: Sequence[CompressedTensor],
    outs: Sequence[torch.Tensor],
    *,
    canonical: bool = False,
    num_warps: int | None = None,
    check: bool = True,
) -> list[torch.Tensor]:
    """Decode ``cts[i]`` into ``outs[i]`` for every ``i``, all in one launch; returns ``outs``.

    The outputs are contiguous tensors of the right dtype and size on one device, anywhere in memory.
    With ``check`` (default) it synchronises and raises IntegrityError when a stream does not decode.
    """
    if len(cts) != len(outs):
        raise InputError(f"{len(cts)} compressed tensors but {len(outs)} outputs")
    if not outs:
        return []
    for ct, out in zip(cts, outs, strict=True):
        check_out(ct, out)
    devices = {out.device for out in outs}
    if len(devices) > 1:
        raise InputError(f"the outputs are on several devices: {sorted(map(str, devices))}")
    batch = prepare(cts, outs[0].device, align=1)
    live = [out for out in outs if out.numel()]
    if not live:
        return list(outs)
    if INTERPRETED and batch.device.type != "cpu":
        # the interpreter copies only its arguments' storages to the host: decode into one buffer, then copy
        buffer = torch.empty(batch.nbytes, dtype=torch.uint8, device=batch.device)
        _launch(batch, buffer, batch.out_offsets, canonical, num_warps)
        for view, out in zip(batch.views(buffer), outs, strict=True):
            out.view(-1).copy_(view.view(-1))
    else:
        # each output is addressed as a byte offset from the lowest one, so any placement works
        anchor = min(live, key=lambda t: t.data_ptr())
        start = anchor.data_ptr()
        offsets = torch.tensor([out.data_ptr() - start if out.numel() else 0 for out in outs], dtype=torch.int64)
        _launch(batch, anchor.view(-1).view(torch.uint8), offsets.to(batch.device), canonical, num_warps)
    if check:
        batch.check()
    return list(outs)
