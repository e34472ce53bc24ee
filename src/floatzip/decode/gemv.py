"""The fused decode-GEMV: ``Y = X W^T`` straight from W's format v2 record, W decoded in registers and never
written (src/floatzip/csrc/fz_gemv.cu, compiled by NVRTC; docs/KERNELS.md has the design and the numbers).

W is a 2-D BF16 or F16 record (a Linear's ``[out, in]`` weight); X has 1 to 8 rows; products are accumulated
in fp32 in a fixed order (fz_gemv.h), which differs from cuBLAS's: the fused path is opt-in and not
bit-identical to ``x @ w.T``; its error bound is in docs/KERNELS.md.

* :func:`plan` lays the record out as a one-tensor decode batch plus the GEMV's segment tables (host memory);
* :func:`emulate` computes ``Y`` on the CPU with the kernel's own per-lane code (the compiled core's twin),
  bit for bit what the kernel computes: the tests' GPU path;
* :func:`prepare` puts a plan on a CUDA device and :func:`gemv` launches the kernel there.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from floatzip import _core
from floatzip.decode import _nvrtc, cuda
from floatzip.errors import BackendError, InputError, IntegrityError
from floatzip.format.blob import CompressedTensor

if TYPE_CHECKING:
    import torch

MAX_BATCH = int(_core.GEMV_MAX_BATCH)
STEP = 256  # elements of W a warp's step covers (16-bit dtypes)
KERNEL_BATCHES = (1, 2, 4, 8)  # rows of X the GPU kernel is compiled for; other counts are padded up


@dataclass(eq=False)
class GemvPlan:
    """One W laid out for the fused GEMV (host memory)."""

    batch: cuda.HostBatch
    rows: int  # W's out features
    in_features: int
    f16: bool
    path: int  # 2: in % 1024 == 0, 1: in % 256 == 0, 0: any shape (fz_gemv.cu)
    raw_bits: int
    long_codes: bool
    seg_base: npt.NDArray[np.uint64]  # per tile: its first segment
    row_seg: npt.NDArray[np.uint64]  # per row, and one past: its first segment
    validated: set[int] = field(default_factory=set)  # the batch sizes validate_gemv accepted

    @property
    def n_segments(self) -> int:
        return int(self.row_seg[-1])

    def partials_len(self, nb: int) -> int:
        return self.n_segments * nb * (32 if self.path == 0 else 1)

    def validate(self, nb: int) -> None:
        """Check every index the kernel reads by, for ``nb`` rows of X (the compiled core does it)."""
        if nb in self.validated:
            return
        a = self.batch.arrays
        try:
            _core.validate_gemv(a["jobs"], a["tiles"], a["codes"], a["raw"], a["deltas"], a["primaries"], a["longcs"],
                                a["long_patterns"], a["long_at"], self.seg_base, self.row_seg, self.in_features,
                                self.rows, nb, self.path, self.in_features * nb, self.partials_len(nb),
                                self.rows * nb)  # fmt: skip
        except ValueError as exc:
            raise IntegrityError(f"the GEMV batch does not hold together: {exc}") from None
        self.validated.add(nb)


def path_of(in_features: int) -> int:
    return 2 if in_features % 1024 == 0 else 1 if in_features % STEP == 0 else 0


def plan(ct: CompressedTensor) -> GemvPlan:
    """Lay ``ct`` (a 2-D BF16/F16 format v2 record) out for the fused GEMV."""
    import torch

    if not ct.tiled:  # a v3 record is F32: refused below
        raise BackendError(f"the fused GEMV reads format v2 records, not v{ct.version}: compress the checkpoint again")
    if ct.dtype not in (torch.bfloat16, torch.float16) or len(ct.shape) != 2 or ct.numel == 0:
        raise InputError(f"the fused GEMV takes a non-empty 2-D BF16 or F16 weight, not {ct.dtype} {ct.shape}")
    rows, in_features = ct.shape
    hb = cuda.host_batch([ct], out_align=16)
    (launch,) = hb.launches  # one tensor, one dtype: one specialisation
    tiles = hb.arrays["tiles"]
    lo = tiles["out_byte"].astype(np.int64) // 2
    hi = lo + tiles["full_steps"].astype(np.int64) * STEP + tiles["tail"].astype(np.int64)
    first_row, last_row = lo // in_features, (hi - 1) // in_features
    segs = last_row - first_row + 1
    seg_base = np.concatenate([[0], np.cumsum(segs)[:-1]]).astype(np.uint64)
    per_row = np.zeros(rows + 1, dtype=np.int64)  # tiles holding part of each row, by differences
    np.add.at(per_row, first_row, 1)
    np.add.at(per_row, last_row + 1, -1)
    row_seg = np.concatenate([[0], np.cumsum(np.cumsum(per_row)[:rows])]).astype(np.uint64)
    p = GemvPlan(hb, rows, in_features, ct.dtype == torch.float16, path_of(in_features), launch.raw_bits,
                 launch.long_codes, cuda._aligned_copy(seg_base), cuda._aligned_copy(row_seg))  # fmt: skip
    p.validate(1)
    return p


def _check_x(p: GemvPlan, nb: int, cols: int) -> None:
    if not 1 <= nb <= MAX_BATCH or cols != p.in_features:
        raise InputError(f"x must be [1..{MAX_BATCH}, {p.in_features}], not [{nb}, {cols}]")


def emulate(p: GemvPlan, x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint32]]:
    """``Y = X W^T`` (``x``: ``[nb, in]`` fp32) on the CPU, exactly as the kernel computes it; the per-tile
    error flags (a tile whose lanes do not end at their lengths: corrupt data)."""
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim != 2:
        raise InputError("x must be a 2-D float32 array")
    nb = x.shape[0]
    _check_x(p, nb, x.shape[1])
    p.validate(nb)
    xt = cuda._aligned_copy(np.ascontiguousarray(x.T))  # X[b, col] at [col * nb + b]
    partials = cuda._aligned_copy(np.zeros(max(p.partials_len(nb), 1), dtype=np.float32))
    y = cuda._aligned_copy(np.zeros(nb * p.rows, dtype=np.float32))
    errors = cuda._aligned_copy(np.zeros(p.batch.n_tiles, dtype=np.uint32))
    a = p.batch.arrays
    _core.gemv_host(a["jobs"], a["tiles"], a["codes"], a["raw"], a["deltas"], a["primaries"], a["longcs"],
                    a["long_patterns"], a["long_at"], xt, p.seg_base, p.row_seg, partials, y, errors, p.in_features,
                    p.rows, nb, p.path, p.raw_bits, p.long_codes, p.f16)  # fmt: skip
    return y.reshape(nb, p.rows), errors


# ---------------------------------------------------------------------------------------------------
# the device


@dataclass(eq=False)
class DeviceGemv:
    """A :class:`GemvPlan` resident on a CUDA device."""

    plan: GemvPlan
    device: torch.device
    tensors: dict[str, torch.Tensor]
    partials: torch.Tensor  # room for 8 rows of X
    errors: torch.Tensor
    xt: torch.Tensor  # fp32 room for X transposed, 8 rows: filled by each call, never reallocated
    y: torch.Tensor  # fp32 room for Y, 8 rows

    def check(self) -> None:
        """Raise IntegrityError if the last product met a tile that does not decode (synchronises)."""
        bad = self.errors.cpu().numpy()
        if bad.any():
            raise IntegrityError(f"tile {int(np.flatnonzero(bad)[0])} of the weight does not decode (corrupt data)")


def prepare(p: GemvPlan | CompressedTensor, device: torch.device | str | None = None) -> DeviceGemv:
    """``p`` (or a record, planned first) on a CUDA device."""
    import torch

    gp = plan(p) if isinstance(p, CompressedTensor) else p
    for nb in KERNEL_BATCHES:
        gp.validate(nb)
    dev = cuda._device_of(device)
    db = cuda.to_device(gp.batch, dev)
    tensors = dict(db.tensors)
    tensors["seg_base"] = torch.from_numpy(gp.seg_base.view(np.uint8)).to(dev)
    tensors["row_seg"] = torch.from_numpy(gp.row_seg.view(np.uint8)).to(dev)
    partials = torch.zeros(max(gp.partials_len(MAX_BATCH), 1), dtype=torch.float32, device=dev)
    xt = torch.zeros(gp.in_features * MAX_BATCH, dtype=torch.float32, device=dev)
    y = torch.zeros(gp.rows * MAX_BATCH, dtype=torch.float32, device=dev)
    return DeviceGemv(gp, dev, tensors, partials, db.errors, xt, y)


def kernel_batch(nb: int) -> int:
    """The compiled batch size that ``nb`` rows of X run in (padded with zero rows)."""
    return next(k for k in KERNEL_BATCHES if k >= nb)


def gemv(dg: DeviceGemv, x: torch.Tensor) -> torch.Tensor:
    """``Y = X W^T`` on the GPU (``x``: ``[nb, in]``, any float dtype, read as fp32): ``[nb, out]`` fp32, a view
    of ``dg.y``, which the next call on ``dg`` overwrites (copy it out, or consume it first).

    Launches on the current stream into ``dg``'s own X and Y rooms; no allocation, no synchronisation: CUDA-graph
    safe. Corrupt tiles are flagged in ``dg.errors`` (:meth:`DeviceGemv.check`)."""
    import torch

    p = dg.plan
    if x.dim() != 2 or x.device != dg.device:
        raise InputError(f"x must be a 2-D tensor on {dg.device}")
    nb = x.shape[0]
    _check_x(p, nb, x.shape[1])
    kb = kernel_batch(nb)
    xt = dg.xt[: p.in_features * kb].view(p.in_features, kb)
    if nb < kb:
        xt[:, nb:].zero_()  # the padding rows of X
    xt[:, :nb].copy_(x.t())
    y = dg.y[: kb * p.rows].view(kb, p.rows)
    if p.path == 0:
        dg.partials.zero_()
    name = _nvrtc.gemv_kernel_name(p.raw_bits, p.long_codes, kb, p.f16, p.path)
    mod = _module(dg.device, name)
    stream = torch.cuda.current_stream(dg.device).cuda_stream
    t = {k: v.data_ptr() for k, v in dg.tensors.items()}
    a = p.batch
    args = [t["jobs"], t["tiles"], t["codes"], dg.tensors["codes"].numel() // 4 - 1, t["raw"], t["deltas"],
            t["primaries"], t["longcs"], t["long_patterns"], t["long_at"], xt.data_ptr(), p.in_features,
            t["seg_base"], dg.partials.data_ptr(), dg.errors.data_ptr()]  # fmt: skip
    mod.launch(name, len(a.arrays["jobs"]), cuda.WARPS * 32, args, stream)
    lanes = 32 if p.path == 0 else 1
    threads = p.rows * kb
    fin = [dg.partials.data_ptr(), lanes, t["row_seg"], p.rows, kb, y.data_ptr(), p.rows]
    mod.launch(_nvrtc.GEMV_FINISH, (threads + 255) // 256, 256, fin, stream)
    return y[:nb]


_MODULES: dict[tuple[int, str], cuda._Module] = {}


def _module(device: torch.device, name: str) -> cuda._Module:
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    mod = _MODULES.get((index, name))
    if mod is None:
        major, minor = torch.cuda.get_device_capability(index)
        with torch.cuda.device(index):
            torch.cuda.init()
            cubin, names = compiled(f"sm_{major}{minor}", name)
            mod = _MODULES[(index, name)] = cuda._Module(cubin, names)
    return mod


def compiled(arch: str, name: str) -> tuple[bytes, dict[str, str]]:
    """One GEMV specialisation (and the finishing pass) for ``arch``, from the disk cache when the sources
    have not changed."""
    src = _nvrtc.csrc_dir()
    h = hashlib.sha256()
    for f in ("fz_lane.h", "fz_batch.h", "fz_gemv.h", _nvrtc.GEMV_SOURCE):
        h.update((src / f).read_bytes())
    h.update(repr((arch, _nvrtc.version(), _nvrtc.GEMV_OPTIONS, name)).encode())
    path = cuda.cache_dir() / f"gemv-{arch}-{h.hexdigest()[:24]}.cubin"
    names_path = path.with_suffix(".names")
    if path.is_file() and names_path.is_file():
        pairs = [line.split("\t", 1) for line in names_path.read_text().splitlines() if "\t" in line]
        return path.read_bytes(), {k: v for k, v in pairs}
    c = _nvrtc.compile_gemv(arch, [name])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(c.cubin)
        ntmp = names_path.with_suffix(f".{os.getpid()}.ntmp")
        ntmp.write_text("".join(f"{k}\t{v}\n" for k, v in c.names.items()))
        ntmp.replace(names_path)
        tmp.replace(path)
    except OSError:
        pass  # a read-only home: compile again next time
    return c.cubin, c.names
