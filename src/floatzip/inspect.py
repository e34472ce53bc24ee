"""Where the bytes go: per-tensor statistics of a checkpoint, compressed or not, and a plot of them."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from floatzip.codec.encode import compress_words
from floatzip.decode import decode_words
from floatzip.errors import InputError
from floatzip.format import spec
from floatzip.format.blob import CompressedTensor
from floatzip.format.checkpoint import (
    CompressedFile,
    is_floatzip_checkpoint,
    member_words,
    open_compressed,
    read_blob,
)
from floatzip.format.safetensors_io import Entry, iter_files, not_safetensors_hint, read_header, read_range


@dataclass
class TensorStats:
    file: str
    name: str
    dtype: str
    shape: list[int]
    original_bytes: int
    stored_bytes: int  # as stored (compressed: in the checkpoint; plain: what floatzip would store)
    encoded: bool
    exponent_entropy: float | None  # bits per weight, order 0
    bits_per_weight: float | None
    mantissa_bits_coded: int | None  # k: top mantissa bits coded with the exponent
    split: dict[str, int] = field(default_factory=dict)  # where its stored bytes go (see PARTS)

    @property
    def ratio(self) -> float:
        return self.stored_bytes / self.original_bytes if self.original_bytes else 1.0


PARTS = (
    "coded symbols",
    "raw bits",
    "tables",
    "lane sizes",
    "blob headers",
    "groups of small tensors",
    "plain tensors",
)
"""Where a tensor's stored bytes go: a blob's code stream, raw fields, code tables, tile and lane index and
fixed header (with padding); or the whole tensor, stored unchanged."""


def _split(ct: CompressedTensor | None, stored: int) -> dict[str, int]:
    if ct is None or not ct.tiled or stored >= ct.original_nbytes:
        return {"plain tensors": stored}
    info = ct.v2
    coded, raw = 4 * int(info["code_words"]), 4 * int(info["raw_words"])
    tables = int(info["tables_len"])
    n_tiles = int(info["n_tiles"])
    lanes = 4 * (n_tiles + 1) + 4 * n_tiles + 4 * int(info["delta_words"])
    return {"coded symbols": coded, "raw bits": raw, "tables": tables, "lane sizes": lanes,
            "blob headers": stored - coded - raw - tables - lanes}  # fmt: skip


def component(file: str) -> str:
    """The part of a checkpoint a file belongs to: its top folder (a pipeline's ``transformer``...), or the
    checkpoint itself."""
    return file.split("/")[0] if "/" in file else "(top level)"


@dataclass
class Inspection:
    path: str
    compressed: bool
    tensors: list[TensorStats]
    exponent_histogram: dict[str, list[int]]  # dtype -> counts over exponent values, float tensors only
    df11_bytes: int | None = None  # a DF11 checkpoint: the tensor bytes DF11 stores (tensors: what it encodes)
    file_headers: dict[str, int] = field(default_factory=dict)  # file -> bytes beside its tensors' (headers)

    @property
    def original_bytes(self) -> int:
        return sum(t.original_bytes for t in self.tensors)

    @property
    def stored_bytes(self) -> int:
        return sum(t.stored_bytes for t in self.tensors)

    def to_json(self) -> str:
        doc = asdict(self)
        doc["original_bytes"] = self.original_bytes
        doc["stored_bytes"] = self.stored_bytes
        doc["ratio"] = self.stored_bytes / self.original_bytes if self.original_bytes else 1.0
        if self.df11_bytes is not None:
            doc["df11_ratio"] = self.df11_bytes / self.original_bytes if self.original_bytes else 1.0
        for t, d in zip(self.tensors, doc["tensors"], strict=True):
            d["ratio"] = t.ratio
        return json.dumps(doc, indent=1)


def _exponents(words: np.ndarray, layout: spec.FloatLayout) -> np.ndarray:
    exp = (words.astype(np.int64) >> layout.man_bits) & ((1 << layout.exp_bits) - 1)
    return np.bincount(exp, minlength=1 << layout.exp_bits)


def _entropy(counts: np.ndarray) -> float:
    n = counts.sum()
    p = counts[counts > 0] / n
    return float(-(p * np.log2(p)).sum()) if n else 0.0


def _stats(
    rel: str, name: str, dtype: str, shape: tuple[int, ...], original: int, stored: int,
    ct: CompressedTensor | None, words: np.ndarray | None, hist: dict[str, list[int]],
) -> TensorStats:  # fmt: skip
    entropy = None
    layout = spec.LAYOUT_BY_NAME.get(dtype)
    if layout is not None and words is not None and words.size:
        counts = _exponents(words, layout)
        entropy = _entropy(counts)
        acc = hist.setdefault(dtype, [0] * counts.size)
        hist[dtype] = [a + int(c) for a, c in zip(acc, counts, strict=True)]
    n = math.prod(shape)
    return TensorStats(
        file=rel,
        name=name,
        dtype=dtype,
        shape=list(shape),
        original_bytes=original,
        stored_bytes=stored,
        encoded=ct is not None,
        exponent_entropy=entropy,
        bits_per_weight=8 * stored / n if n else None,
        mantissa_bits_coded=None if ct is None else ct.layout.man_bits - ct.shift,
        split=_split(ct, stored),
    )


def inspect_path(path: str | Path, *, model_config: str | Path | None = None, progress: bool = False) -> Inspection:
    """Statistics of every tensor of a checkpoint: a floatzip directory, a model directory or file, or a
    DF11 checkpoint (its decoded BF16 tensors, what floatzip would store for them, and DF11's size;
    ``model_config`` as in :func:`floatzip.convert.df11.iter_df11`)."""
    from floatzip.convert import df11

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if df11.is_df11_checkpoint(path):
        return _inspect_df11(path, model_config)
    compressed = path.is_dir() and is_floatzip_checkpoint(path)
    every = [path] if path.is_file() else list(iter_files(path))
    files = every if path.is_file() else [f for f in every if f.suffix == ".safetensors"]
    if not files:
        raise InputError(f"{path}: holds no .safetensors file{not_safetensors_hint(every)}")
    root = path if path.is_dir() else path.parent
    stats: list[TensorStats] = []
    hist: dict[str, list[int]] = {}
    with tqdm(total=sum(f.stat().st_size for f in files), desc="inspect", unit="B", unit_scale=True,
              disable=None if progress else True, leave=False) as bar:  # fmt: skip
        headers = {}
        for f in files:
            rel = f.relative_to(root).as_posix()
            first = len(stats)
            _inspect_file(f, rel, compressed, stats, hist)
            headers[rel] = f.stat().st_size - sum(t.stored_bytes for t in stats[first:]) if compressed else 0
            bar.update(f.stat().st_size)
    return Inspection(str(path), compressed, stats, hist, file_headers=headers)


def _inspect_file(f: Path, rel: str, compressed: bool, stats: list[TensorStats], hist: dict[str, list[int]]) -> None:
    """One file's tensors into ``stats`` (and the exponent histogram ``hist``)."""
    if compressed:
        cf = open_compressed(f)
        ours = cf.header.by_name()
        members: dict[str, np.ndarray] = {}
        share = _group_shares(cf)
        with f.open("rb") as fh:
            for o in cf.original.entries:
                e = ours[o.name]
                if o.name in cf.members:
                    first, _ = cf.members[o.name]
                    if o.name == first:
                        members = member_words(cf, first)
                    part = _stats(rel, o.name, o.dtype, o.shape, o.nbytes, share[o.name], None, members[o.name], hist)
                    split = {"groups of small tensors": share[o.name]}
                    stats.append(dataclasses.replace(part, encoded=True, split=split))
                elif o.name in cf.encoded:
                    ct = read_blob(cf, fh, o.name)
                    words = np.empty(ct.numel, dtype=np.dtype(f"<u{ct.layout.nbytes}"))
                    decode_words(ct, words)
                    stats.append(_stats(rel, o.name, o.dtype, o.shape, o.nbytes, e.nbytes, ct, words, hist))
                else:
                    plain = _plain_words(fh, cf.header.data_start + e.begin, o, str(f))
                    stats.append(_stats(rel, o.name, o.dtype, o.shape, o.nbytes, e.nbytes, None, plain, hist))
    else:
        header = read_header(f)
        with f.open("rb") as fh:
            for o in header.entries:
                data = read_range(fh, header.data_start + o.begin, o.nbytes, str(f))
                stats.append(_would_store(rel, o.name, o.dtype, o.shape, data, hist))


def _inspect_df11(path: Path, model_config: str | Path | None) -> Inspection:
    from floatzip.convert import df11

    hist: dict[str, list[int]] = {}
    stats = [_would_store(t.file, t.name, t.dtype, t.shape, t.data, hist)
             for t in df11.iter_df11(path, model_config=model_config)]  # fmt: skip
    return Inspection(str(path), False, stats, hist, df11_bytes=df11.df11_sizes(path)[0])


def _would_store(
    rel: str, name: str, dtype: str, shape: tuple[int, ...], data: bytearray, hist: dict[str, list[int]]
) -> TensorStats:
    """Statistics of a plain tensor, with what floatzip would store for it (``data`` is read, never changed)."""
    layout = spec.LAYOUT_BY_NAME.get(dtype)
    words = None if layout is None else np.frombuffer(data, dtype=np.dtype(f"<u{layout.nbytes}"))
    ct = None
    stored = len(data)
    if layout is not None and words is not None and words.size >= spec.MIN_ENCODED_NUMEL:
        ct = compress_words(words, layout, tuple(shape))
        stored = min(ct.nbytes, len(data))
    return _stats(rel, name, dtype, shape, len(data), stored, ct, words, hist)


def _group_shares(cf: CompressedFile) -> dict[str, int]:
    """Each group member's share of its group's stored bytes (the record, in the first member's slot, and the
    others' marks), in proportion to its original bytes; the shares of a group add up to its bytes exactly."""
    ours, theirs = cf.header.by_name(), cf.original.by_name()
    out: dict[str, int] = {}
    for first in cf.records:
        names = [n for n, (f, _) in cf.members.items() if f == first]
        stored = sum(ours[n].nbytes for n in names)
        original = sum(theirs[n].nbytes for n in names)
        for n in names:
            out[n] = stored * theirs[n].nbytes // original
        out[names[0]] += stored - sum(out[n] for n in names)
    return out


def _plain_words(fh: io.BufferedIOBase, start: int, e: Entry, where: str) -> np.ndarray | None:
    layout = spec.LAYOUT_BY_NAME.get(e.dtype)
    if layout is None:
        return None
    return np.frombuffer(read_range(fh, start, e.nbytes, where), dtype=np.dtype(f"<u{layout.nbytes}"))


def format_table(ins: Inspection, limit: int | None = None) -> str:
    several = len({t.file for t in ins.tensors}) > 1
    rows = [(*(("file",) if several else ()), "tensor", "dtype", "shape", "exp H", "bits/w", "k", "ratio")]
    shown = ins.tensors if limit is None else ins.tensors[:limit]
    for t in shown:
        rows.append((
            *((t.file if len(t.file) <= 40 else "…" + t.file[-39:],) if several else ()),
            t.name if len(t.name) <= 48 else "…" + t.name[-47:],
            t.dtype,
            "×".join(map(str, t.shape)) or "scalar",
            "" if t.exponent_entropy is None else f"{t.exponent_entropy:.3f}",
            "" if t.bits_per_weight is None else f"{t.bits_per_weight:.3f}",
            "" if t.mantissa_bits_coded is None else str(t.mantissa_bits_coded),
            f"{100 * t.ratio:.2f}%" + ("" if t.encoded else " (plain)"),
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    left = 4 if several else 3  # text columns, then numbers
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]  # fmt: skip
    if limit is not None and len(ins.tensors) > limit:
        lines.append(f"… {len(ins.tensors) - limit} more tensors (--all shows every one)")
    total = ins.stored_bytes / ins.original_bytes if ins.original_bytes else 1.0
    what = "stored" if ins.compressed else "would store"
    lines.append(f"{len(ins.tensors)} tensors, {ins.original_bytes / 1e6:.2f} MB of tensor data; floatzip {what} "
                 f"{ins.stored_bytes / 1e6:.2f} MB = {100 * total:.2f}%")  # fmt: skip
    if ins.df11_bytes is not None:
        df11 = ins.df11_bytes / ins.original_bytes if ins.original_bytes else 1.0
        lines.append(f"a DF11 checkpoint: DF11 stores {ins.df11_bytes / 1e6:.2f} MB = {100 * df11:.2f}% "
                     f"(floatzip convert makes it a floatzip checkpoint)")  # fmt: skip
    lines.append("exp H: the exponent's order-0 entropy, bits per weight (a bound for coding it alone); bits/w: "
                 "bits floatzip stores per weight; k: top mantissa bits coded together with the exponent")  # fmt: skip
    return "\n".join(lines)


def plot(ins: Inspection, out: str | Path, *, label: int = 6) -> None:
    """A PNG of where the bytes go: the exponent histogram of each dtype (log scale, one axis each), the
    stored bytes of each component split into PARTS (and file headers), and each tensor's ratio with the
    ``label`` largest tensors named."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'floatzip[plot]'") from None
    dtypes = [d for d, c in ins.exponent_histogram.items() if any(c)]
    fig = plt.figure(figsize=(11, 11), constrained_layout=True)
    grid = fig.add_gridspec(3, max(1, len(dtypes)))
    for i, dtype in enumerate(dtypes):
        ax = fig.add_subplot(grid[0, i])
        c = np.asarray(ins.exponent_histogram[dtype], dtype=float)
        used = np.flatnonzero(c)
        xs = np.arange(used.min(), used.max() + 1)
        ax.bar(xs, c[xs], color="tab:blue")
        ax.set_yscale("log")
        ax.set_xlabel(f"{dtype} biased exponent")
        ax.set_ylabel("weights")
        ax.set_title(f"{dtype}: exponent H = {_entropy(c):.3f} bits")
    ax = fig.add_subplot(grid[1, :])
    comps = sorted({component(t.file) for t in ins.tensors})
    parts = [*PARTS, "file headers"]
    table = {c: dict.fromkeys(parts, 0) for c in comps}
    original = dict.fromkeys(comps, 0)
    for t in ins.tensors:
        original[component(t.file)] += t.original_bytes
        for k, v in t.split.items():
            table[component(t.file)][k] += v
    for f, n in ins.file_headers.items():
        table[component(f)]["file headers"] += n
    left = np.zeros(len(comps))
    for k in parts:
        vals = np.array([100 * table[c][k] / max(original[c], 1) for c in comps])
        if vals.any():
            ax.barh(comps, vals, left=left, label=k)
            left += vals
    ax.set_xlabel("stored bytes, % of the component's original tensor bytes")
    ax.set_title("Where the bytes go, per component")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_xlim(0, max(105.0, float(left.max()) + 5))
    ax = fig.add_subplot(grid[2, :])
    ratios = [100 * t.ratio for t in ins.tensors]
    colors = ["tab:blue" if t.encoded else "tab:gray" for t in ins.tensors]
    widths = np.array([t.original_bytes / 1e6 for t in ins.tensors])
    starts = np.concatenate([[0.0], np.cumsum(widths)[:-1]])
    ax.bar(starts, ratios, width=widths, align="edge", color=colors, edgecolor="white", linewidth=0.3)
    for i in sorted(range(len(ins.tensors)), key=lambda i: -ins.tensors[i].original_bytes)[:label]:
        t = ins.tensors[i]
        name = t.name if len(t.name) <= 40 else "…" + t.name[-39:]
        ax.annotate(name, (starts[i] + widths[i] / 2, ratios[i]), rotation=90, ha="center", va="top", fontsize=7,
                    xytext=(0, -4), textcoords="offset points")  # fmt: skip
    ax.axhline(100 * ins.stored_bytes / max(ins.original_bytes, 1), color="tab:red", lw=1, label="whole checkpoint")
    ax.set_ylim(0, 105)
    ax.set_xlabel("original MB, tensors in file order (bar width = tensor size); gray = stored plain")
    ax.set_ylabel("stored / original, %")
    ax.legend(loc="lower right")
    ax.set_title(f"Per-tensor ratio: {Path(ins.path).name} (the {label} largest tensors named)")
    fig.savefig(out, dpi=100)
    plt.close(fig)
