"""NVRTC through ctypes: compile floatzip's CUDA source (src/floatzip/csrc) for a GPU architecture.

No GPU is needed to compile: the CI compiles every kernel for sm_80 and sm_90a and reads ptxas's report
(registers, spills). The library comes from PyTorch's CUDA wheels (``nvidia-cuda-nvrtc``), a CUDA toolkit,
or ``FLOATZIP_NVRTC`` (a path to ``libnvrtc.so``).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from floatzip.errors import BackendError

SOURCE = "fz_decode.cu"


def csrc_dir() -> Path:
    """The directory holding the CUDA source and the shared per-lane header."""
    return Path(str(resources.files("floatzip") / "csrc"))


def _candidates() -> list[str]:
    found: list[str] = []
    env = os.environ.get("FLOATZIP_NVRTC")
    if env:
        found.append(env)
    for base in sys.path:
        for sub in ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib", "nvidia/cu12/lib"):
            found += sorted(glob.glob(os.path.join(base, sub, "libnvrtc.so*")), reverse=True)
    for root in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        if root:
            found += sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")), reverse=True)
    found += ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
    return [f for f in found if "builtins" not in os.path.basename(f) and "alt" not in os.path.basename(f)]


@functools.cache
def library() -> ctypes.CDLL:
    """libnvrtc, loaded once; BackendError naming what to install if it is nowhere."""
    errors = []
    for name in _candidates():
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    raise BackendError(
        "NVRTC (libnvrtc) is not installed: pip install nvidia-cuda-nvrtc, or set FLOATZIP_NVRTC to libnvrtc.so"
    )


def version() -> tuple[int, int]:
    lib = library()
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


@dataclass(frozen=True)
class Compiled:
    """One compile: the cubin, the lowered (mangled) name of each kernel asked for, and ptxas's report."""

    arch: str
    cubin: bytes
    names: dict[str, str]
    log: str

    def resources(self) -> dict[str, dict[str, int]]:
        """Per mangled kernel: registers, spill stores and loads (bytes), stack frame (bytes), shared memory."""
        out: dict[str, dict[str, int]] = {}
        current = None
        for line in self.log.splitlines():
            m = re.search(r"Compiling entry function '([^']+)'", line)
            if m:
                current = m.group(1)
                out[current] = {}
                continue
            if current is None:
                continue
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m:
                out[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
            m = re.search(r"Used (\d+) registers", line)
            if m:
                out[current]["registers"] = int(m.group(1))
                s = re.search(r"(\d+) bytes smem", line)
                out[current]["smem"] = int(s.group(1)) if s else 0
        return out


def _check(lib: ctypes.CDLL, result: int, what: str) -> None:
    if result != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise BackendError(f"NVRTC {what} failed: {lib.nvrtcGetErrorString(result).decode()}")


def compile_source(
    source: str, name_expressions: list[str], arch: str, options: list[str] | None = None, filename: str = SOURCE
) -> Compiled:
    """Compile ``source`` (which may include the headers of :func:`csrc_dir`) for ``arch`` (e.g. ``sm_90a``)."""
    lib = library()
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), filename.encode(), 0, None, None), "create")
    try:
        for expr in name_expressions:
            _check(lib, lib.nvrtcAddNameExpression(prog, expr.encode()), "name expression")
        opts = [
            f"--gpu-architecture={arch}",
            "--std=c++17",
            f"--include-path={csrc_dir()}",
            "--ptxas-options=-v",
            "-default-device",
            *(options or []),
        ]
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        result = lib.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        if result != 0:
            raise BackendError(f"NVRTC could not compile {filename} for {arch}:\n{log}")
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        cubin = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetCUBIN(prog, cubin), "get cubin")
        names = {}
        for expr in name_expressions:
            lowered = ctypes.c_char_p()
            _check(lib, lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(lowered)), "lowered name")
            names[expr] = (lowered.value or b"").decode()
        return Compiled(arch, cubin.raw, names, log)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def kernel_source() -> str:
    return (csrc_dir() / SOURCE).read_text()


def decode_kernel_name(bits: int, raw_bits: int, long_codes: bool, planes: int = 0) -> str:
    """The decode kernel for an output width, a raw field width (16-bit dtypes), long codes and, for F32, the
    coded low planes (its compile-time variant R, docs/FORMAT.md §1.7)."""
    r = raw_bits if bits == 16 else planes if bits == 32 else 0
    return f"fz::decode_kernel<{bits}, {r}u, {'true' if long_codes else 'false'}>"


def decode_kernel_names() -> list[str]:
    """Every specialisation of the decode kernel: BF16/F16 for each raw width, F32 with 0-2 coded low planes,
    F8; long codes or not."""
    combos = [(16, r, 0) for r in range(4, 12)] + [(32, 0, p) for p in range(3)] + [(8, 0, 0)]
    return [decode_kernel_name(bits, r, long, p) for bits, r, p in combos for long in (False, True)]


# registers: ptxas otherwise caps some specialisations at 40 and spills around the out-of-line slow path
DECODER_OPTIONS = ["--maxrregcount=96"]


def compile_decoder(arch: str, names: list[str] | None = None) -> Compiled:
    return compile_source(kernel_source(), names or decode_kernel_names(), arch, DECODER_OPTIONS)


GEMV_SOURCE = "fz_gemv.cu"
GEMV_FINISH = "fz::gemv_finish"
# the fused GEMV holds up to 8 fp32 accumulators per lane besides the decoder's state
GEMV_OPTIONS = ["--maxrregcount=128"]


def gemv_source() -> str:
    return (csrc_dir() / GEMV_SOURCE).read_text()


def gemv_kernel_name(raw_bits: int, long_codes: bool, batch: int, f16: bool, path: int) -> str:
    """The fused decode-GEMV for a raw width, long codes, rows of X (1..8), W's dtype (F16 or BF16) and its
    path (2: ``in % 1024 == 0``, 1: ``in % 256 == 0``, 0: any shape; see fz_gemv.cu)."""
    b, f = ("true" if long_codes else "false"), ("true" if f16 else "false")
    return f"fz::gemv_kernel<{raw_bits}u, {b}, {batch}, {f}, {path}>"


def compile_gemv(arch: str, names: list[str]) -> Compiled:
    """The GEMV kernels ``names`` (from :func:`gemv_kernel_name`) and the finishing pass, for ``arch``."""
    return compile_source(gemv_source(), [*names, GEMV_FINISH], arch, GEMV_OPTIONS, filename=GEMV_SOURCE)
