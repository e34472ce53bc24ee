"""DFloat11 (DF11) checkpoints: recognise them, read them on the CPU, convert them to floatzip bit for bit.

A DF11 checkpoint (dfloat11 0.2-0.5, safetensors) is a directory with a ``config.json`` carrying a
``dfloat11_config`` (``version``, ``threads_per_block``, ``bytes_per_thread``, ``pattern_dict``) and
safetensors files in which every compressed module ``M`` is a *block* of six tensors ``M.luts``,
``M.encoded_exponent``, ``M.sign_mantissa``, ``M.output_positions``, ``M.gaps``, ``M.split_positions``
(their meaning: :mod:`floatzip.convert._df11_decode`), next to the tensors DF11 left alone.
``pattern_dict`` maps a regular expression over module names to the sub-modules whose weights the
block concatenates, in order; a Linear or Embedding module is a block of its own ``weight``.
DF11 stores no shapes: they come from the model's architecture (``config.json``, or ``model_config``
when the DF11 directory was saved without one), built on the meta device with transformers.

Conversion decodes one DF11 file at a time into a BF16 shard in a scratch directory beside the
destination (``model-0000i-of-0000N.safetensors`` and an index when there are several files), one
DF11 block at a time, adds that shard to the floatzip checkpoint being built and deletes it: extra
disk is one shard in BF16, memory stays near one block. The checkpoint is verified before it appears.
A decompressed floatzip checkpoint is then that BF16 checkpoint, byte for byte.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from floatzip.convert._df11_decode import Df11Block, decode_block
from floatzip.errors import FormatError, InputError
from floatzip.format.checkpoint import CheckpointReport, build_checkpoint, staging_prefix
from floatzip.format.safetensors_io import Entry, Header, StreamingWriter, iter_files, read_header, read_range

if TYPE_CHECKING:
    import torch  # imported where a model is built or tensors are made: inspect and detection stay light

BLOCK_PARTS = ("luts", "encoded_exponent", "sign_mantissa", "output_positions", "gaps", "split_positions")
# dtypes a part may have; output_positions is uint32 stored as bytes (0.5) or as U32
_PART_DTYPES = {"output_positions": ("U8", "U32"), "split_positions": ("I64", "I32")}
_OPTIONAL_PARTS = ("split_positions",)  # DF11's loader needs it only for blocks of several weights
CONFIG_KEY = "dfloat11_config"
_Weights = list[tuple[str, tuple[int, ...]]]  # (name, shape) of the weights one block concatenates
_Layout = dict[str, _Weights]  # by block prefix, for one file
INDEX_NAME = "model.safetensors.index.json"
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")
_FIRST_SAFETENSORS_VERSION = (0, 2)


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}[name]  # fmt: skip


@dataclass(frozen=True)
class Df11Config:
    version: str
    threads_per_block: int
    bytes_per_thread: int
    pattern_dict: dict[str, list[str]]


@dataclass(frozen=True)
class _File:
    """One safetensors file of a DF11 checkpoint: its header, its blocks (by module name) and plain tensors."""

    path: Path
    rel: str
    header: Header
    blocks: dict[str, dict[str, Entry]]
    plain: tuple[Entry, ...]


@dataclass
class ConvertReport(CheckpointReport):
    """A :class:`CheckpointReport` of the floatzip side, plus the DF11 source's size."""

    df11_bytes: int = 0  # tensor bytes in the DF11 files
    bf16_bytes: int = 0  # tensor bytes of the decoded BF16 checkpoint
    weights_decoded: int = 0
    files_copied: list[str] = field(default_factory=list)

    @property
    def df11_ratio(self) -> float:
        return self.df11_bytes / self.bf16_bytes if self.bf16_bytes else 1.0


# ---------------------------------------------------------------------------------------------
# recognising DF11 checkpoints


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _root_and_files(path: Path) -> tuple[Path, list[Path]]:
    if path.is_file():
        return path.parent, [path] if path.suffix == ".safetensors" else []
    return path, [f for f in iter_files(path) if f.suffix == ".safetensors"]


def _has_block(header: Header) -> bool:
    names = {e.name for e in header.entries}
    return any(n.endswith(".encoded_exponent") and n[: -len("encoded_exponent")] + "luts" in names for n in names)


def is_df11_checkpoint(path: str | Path) -> bool:
    """True for a DF11 directory (``dfloat11_config`` in config.json, or DF11 blocks in a file) or a DF11 file.

    Cheap: reads config.json and safetensors headers only. Pickle-era DF11 directories count too
    (reading them then fails with a message saying what to do).
    """
    path = Path(path)
    if not path.exists():
        return False
    if path.is_dir():
        config = _read_json(path / "config.json")
        if config is not None and isinstance(config.get(CONFIG_KEY), dict):
            return True
    _, files = _root_and_files(path)
    for f in files:
        with contextlib.suppress(FormatError):
            if _has_block(read_header(f)):
                return True
    return False


def df11_hint(path: str | Path) -> str | None:
    """One line telling the user how to convert ``path`` if it is a DF11 model directory; None otherwise.

    For the runtime: ``from_pretrained`` on a DF11 directory can raise with this line. Reads only
    ``config.json`` (DF11's own loader needs its ``dfloat11_config`` there too), and never raises.
    """
    try:
        p = Path(path)
        config = _read_json(p / "config.json") if p.is_dir() else None
    except (OSError, TypeError, ValueError):
        return None
    if config is None or not isinstance(config.get(CONFIG_KEY), dict):
        return None
    extra = "" if "model_type" in config else " --model-config ORIGINAL_MODEL/config.json"
    return (f"{p} is a DFloat11 (DF11) checkpoint, which floatzip reads once converted (losslessly, no GPU "
            f"needed): floatzip convert {p} {p.with_name(p.name + '-floatzip')}{extra}")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# reading the layout


def _parse_version(v: object, where: Path) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in str(v).split(".")[:2])
    except ValueError:
        raise FormatError(f"{where}: unreadable DF11 version {v!r}") from None


def _old_format(where: Path, why: str) -> FormatError:
    return FormatError(
        f"{where}: {why}: an old DFloat11 format (dfloat11 < 0.2, pickled tensors), which floatzip does not read "
        f"(unpickling can run arbitrary code). Download the model's current DF11 release (safetensors, "
        f"dfloat11 >= 0.2) and convert that, or compress the original BF16 model directly: floatzip compress SRC DST"
    )


def _df11_config(doc: Mapping[str, Any], where: Path) -> Df11Config:
    raw = doc.get(CONFIG_KEY)
    if not isinstance(raw, dict):
        raise FormatError(f"{where}: no {CONFIG_KEY} (a DF11 checkpoint's config.json holds one)")
    version = str(raw.get("version", ""))
    if not version:
        raise FormatError(f"{where}: {CONFIG_KEY} has no version")
    if _parse_version(version, where) < _FIRST_SAFETENSORS_VERSION:
        raise _old_format(where, f"DF11 version {version}")
    tpb = raw.get("threads_per_block")
    tpb = tpb[0] if isinstance(tpb, list) and len(tpb) == 1 else tpb
    bpt = raw.get("bytes_per_thread")
    patterns = raw.get("pattern_dict")
    if (
        not isinstance(tpb, int)
        or not isinstance(bpt, int)
        or not isinstance(patterns, dict)
        or not all(isinstance(v, list) and all(isinstance(a, str) for a in v) for v in patterns.values())
    ):
        raise FormatError(f"{where}: malformed {CONFIG_KEY} (threads_per_block, bytes_per_thread, pattern_dict)")
    if isinstance(tpb, bool) or isinstance(bpt, bool) or not (1 <= tpb <= 1 << 20) or not (4 <= bpt <= 1 << 21):
        raise FormatError(f"{where}: unsupported {CONFIG_KEY} layout (threads_per_block={tpb}, bytes_per_thread={bpt}; "
                          "DFloat11 writes 512 and 8)")  # fmt: skip
    for p in patterns:
        _compile_pattern(str(p), where)
    return Df11Config(version, tpb, bpt, {str(k): list(v) for k, v in patterns.items()})


# pattern_dict's keys are regular expressions from an untrusted file, matched against module names: with
# the `regex` package (transformers' own dependency), which can stop a catastrophic one after a timeout
_PATTERN_TIMEOUT_S = 1.0
_MAX_PATTERN_CHARS = 1000


def _compile_pattern(pattern: str, where: Path | str) -> Any:
    import regex

    if len(pattern) > _MAX_PATTERN_CHARS:
        raise FormatError(f"{where}: {CONFIG_KEY}.pattern_dict has a pattern of {len(pattern)} characters")
    try:
        return regex.compile(pattern)
    except (regex.error, RecursionError, OverflowError) as exc:
        shown = pattern[:100]
        raise FormatError(f"{where}: {CONFIG_KEY}.pattern_dict has an invalid pattern {shown!r} ({exc})") from None


def _matching_pattern(patterns: Iterable[str], name: str, where: str) -> str | None:
    """The first pattern that matches all of ``name``, within the timeout."""
    for p in patterns:
        try:
            if _compile_pattern(p, where).fullmatch(name, timeout=_PATTERN_TIMEOUT_S):
                return p
        except TimeoutError:
            shown = p[:100]
            raise FormatError(
                f"{where}: {CONFIG_KEY}.pattern_dict pattern {shown!r} takes over {_PATTERN_TIMEOUT_S:g} s "
                f"to match {name!r} (catastrophic backtracking)"
            ) from None
    return None


def _scan_file(path: Path, root: Path) -> _File:
    header = read_header(path)
    names = {e.name: e for e in header.entries}
    prefixes = [n[: -len(".encoded_exponent")] for n in names if n.endswith(".encoded_exponent")]
    blocks: dict[str, dict[str, Entry]] = {}
    for prefix in prefixes:
        parts: dict[str, Entry] = {}
        for part in BLOCK_PARTS:
            e = names.get(f"{prefix}.{part}")
            if e is None:
                if part in _OPTIONAL_PARTS:
                    continue
                raise FormatError(f"{path}: DF11 block {prefix!r} has no tensor {prefix}.{part}")
            if e.dtype not in _PART_DTYPES.get(part, ("U8",)) or len(e.shape) != (2 if part == "luts" else 1):
                raise FormatError(f"{path}: tensor {e.name!r} is {e.dtype}{list(e.shape)}, not a DF11 {part}")
            parts[part] = e
        blocks[prefix] = parts
    in_blocks = {e.name for parts in blocks.values() for e in parts.values()}
    plain = tuple(e for e in header.entries if e.name not in in_blocks)
    return _File(path, path.relative_to(root).as_posix(), header, blocks, plain)


@dataclass(frozen=True)
class _Source:
    root: Path
    files: list[_File]
    others: list[Path]  # every other file of the directory, copied as is (config.json rewritten)
    config: Df11Config
    model_config: dict[str, Any] | None  # the architecture, without dfloat11_config


def _open_source(path: Path, model_config: str | Path | None) -> _Source:
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    root, st_files = _root_and_files(path)
    all_files = list(iter_files(root)) if path.is_dir() else [path]
    doc = _read_json(root / "config.json") if path.is_dir() or (root / "config.json").is_file() else None
    if not st_files:
        pickles = [f for f in all_files if f.suffix in _PICKLE_SUFFIXES]
        if pickles and (doc is None or CONFIG_KEY in doc or path.is_file()):
            raise _old_format(path, f"no safetensors file, only pickled ones ({pickles[0].name})")
        raise InputError(f"{path}: holds no .safetensors file")
    extra = _load_model_config(Path(model_config)) if model_config is not None else None
    if doc is None or CONFIG_KEY not in doc:
        if extra is None or CONFIG_KEY not in extra:
            raise FormatError(
                f"{root / 'config.json'}: no {CONFIG_KEY}, so the DF11 blocks cannot be mapped to weight names "
                f"(pass the DF11 config.json, or a config holding its {CONFIG_KEY}, as model_config)"
            )
        doc = {**(doc or {}), CONFIG_KEY: extra[CONFIG_KEY]}
    config = _df11_config(doc, root / "config.json")
    arch = {k: v for k, v in (extra if extra is not None else doc).items() if k != CONFIG_KEY}
    if "model_type" not in arch and "model_type" in doc:
        arch = {k: v for k, v in doc.items() if k != CONFIG_KEY}
    files = [_scan_file(f, root) for f in st_files]
    if not any(f.blocks for f in files):
        raise FormatError(f"{path}: no DF11 block (no *.encoded_exponent tensor) in its safetensors files")
    skip = {f.path for f in files} | {root / "config.json", root / INDEX_NAME}
    others = [f for f in all_files if f not in skip] if path.is_dir() else []
    return _Source(root, files, others, config, arch or None)


def _load_model_config(p: Path) -> dict[str, Any]:
    f = p / "config.json" if p.is_dir() else p
    doc = _read_json(f)
    if doc is None:
        raise InputError(f"{f}: not a readable JSON config")
    return doc


def _diffusers_skeleton(arch: Mapping[str, Any], where: Path) -> torch.nn.Module:
    """A diffusers model (FLUX, Wan... transformers; config with ``_class_name``) on the meta device."""
    import torch

    try:
        import diffusers
    except ImportError:
        raise InputError(
            "reading DF11 diffusion checkpoints needs diffusers: pip install 'floatzip[diffusers]'"
        ) from None
    name = str(arch["_class_name"])
    cls = getattr(diffusers, name, None)
    if not isinstance(cls, type) or not hasattr(cls, "from_config"):
        raise FormatError(f"{where}: diffusers has no model class {name[:100]!r}")
    config = {k: v for k, v in arch.items() if not k.startswith("_") and k != "quantization_config"}
    try:
        with torch.device("meta"):
            model: torch.nn.Module = cls.from_config(config)
    except (ValueError, ArithmeticError, TypeError, KeyError, AttributeError, IndexError, RuntimeError) as exc:
        raise FormatError(f"{where}: diffusers cannot build a {name} from this config "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None  # fmt: skip
    return model


def _skeleton(arch: Mapping[str, Any] | None, where: Path) -> torch.nn.Module:
    """The model, on the meta device (shapes only, no memory), from its transformers or diffusers config."""
    import torch

    if arch is not None and "_class_name" in arch and "model_type" not in arch:
        return _diffusers_skeleton(arch, where)
    if arch is None or "model_type" not in arch:
        raise FormatError(f"{where}: config.json does not describe the model's architecture (no model_type or "
                          f"_class_name), so the DF11 weights' shapes are unknown; pass the original model's "
                          f"config.json as model_config (floatzip convert --model-config; for a diffusion model, "
                          f"its transformer/config.json)")  # fmt: skip
    try:
        import transformers
    except ImportError:
        raise InputError("reading DF11 checkpoints needs transformers: pip install 'floatzip[hf]'") from None
    d = dict(arch)
    try:
        config = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    except (ValueError, KeyError) as exc:
        raise FormatError(f"{where}: transformers does not know this architecture ({exc})") from None
    except (ArithmeticError, TypeError, AttributeError, IndexError) as exc:
        why = f"{type(exc).__name__}: {str(exc)[:200]}"
        raise FormatError(f"{where}: a config transformers cannot read ({why})") from None
    names = list(getattr(config, "architectures", None) or [])
    classes: list[Any] = [getattr(transformers, n) for n in names if hasattr(transformers, n)]
    classes += [transformers.AutoModelForCausalLM, transformers.AutoModel]
    with torch.device("meta"):
        for cls in classes:
            try:
                if hasattr(cls, "_from_config"):
                    model: torch.nn.Module = cls._from_config(config, dtype=torch.bfloat16)
                else:
                    model = cls.from_config(config, dtype=torch.bfloat16)
                return model
            except ValueError:  # an Auto class that does not cover this config
                continue
            except (ArithmeticError, TypeError, KeyError, AttributeError, IndexError, RuntimeError) as exc:
                # a config transformers accepts but cannot build (num_attention_heads 0: a ZeroDivisionError)
                raise FormatError(f"{where}: transformers cannot build the model from its config "
                                  f"({type(exc).__name__}: {str(exc)[:200]})") from None  # fmt: skip
    raise FormatError(f"{where}: transformers cannot build a {names or arch.get('model_type')} model")


def _block_weights(model: torch.nn.Module, config: Df11Config, prefix: str, where: str) -> _Weights:
    """(name, shape) of the weights a block concatenates, in DF11's order."""
    import torch

    pattern = _matching_pattern(config.pattern_dict, prefix, where)
    if pattern is None:
        raise FormatError(f"{where}: DF11 block {prefix!r} matches no pattern of {CONFIG_KEY}.pattern_dict")
    try:
        module = model.get_submodule(prefix)
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            return [(f"{prefix}.weight", tuple(int(d) for d in module.weight.shape))]
        out = []
        for attr in config.pattern_dict[pattern]:
            w: Any = module.get_submodule(attr).weight
            out.append((f"{prefix}.{attr}.weight", tuple(int(d) for d in w.shape)))
    except AttributeError as exc:
        raise FormatError(f"{where}: DF11 block {prefix!r} does not fit the model's architecture ({exc})") from None
    return out


def _read_block(f: io.BufferedIOBase, file: _File, prefix: str) -> Df11Block:
    parts = file.blocks[prefix]
    arrays: dict[str, np.ndarray] = {"split_positions": np.zeros(0, dtype=np.int64)}
    for part, e in parts.items():
        data = read_range(f, file.header.data_start + e.begin, e.nbytes, str(file.path))
        if part == "split_positions":
            arrays[part] = np.frombuffer(data, dtype="<i8" if e.dtype == "I64" else "<i4").astype(np.int64)
        else:  # output_positions: its little-endian uint32 bytes, whichever dtype they were stored as
            arr = np.frombuffer(data, dtype=np.uint8)
            arrays[part] = arr.reshape(e.shape) if part == "luts" else arr
    return Df11Block(**arrays)


def _decode_named(
    f: io.BufferedIOBase, file: _File, prefix: str, weights: _Weights, config: Df11Config
) -> list[tuple[str, tuple[int, ...], np.ndarray]]:
    block = _read_block(f, file, prefix)
    numels = [int(np.prod(s)) for _, s in weights]
    where = f"{file.path}: tensor {prefix + '.sign_mantissa'!r}"
    if sum(numels) != block.sign_mantissa.size:
        raise FormatError(f"{where}: holds {block.sign_mantissa.size} weights, but the model's {len(weights)} "
                          f"weights of block {prefix!r} have {sum(numels)}")  # fmt: skip
    if block.split_positions.tolist() != np.cumsum(numels)[:-1].tolist():
        where = f"{file.path}: tensor {prefix + '.split_positions'!r}"
        raise FormatError(f"{where}: {block.split_positions.tolist()} does not split the block into the model's "
                          f"weights {[n for n, _ in weights]}")  # fmt: skip
    words = decode_block(
        block,
        bytes_per_thread=config.bytes_per_thread,
        threads_per_block=config.threads_per_block,
        file=str(file.path),
        prefix=prefix,
    )
    bounds = np.cumsum([0, *numels])
    return [(name, shape, words[bounds[i] : bounds[i + 1]]) for i, (name, shape) in enumerate(weights)]


class Df11Tensor(NamedTuple):
    """One tensor of the BF16 checkpoint a DF11 checkpoint encodes, as safetensors would store it."""

    file: str  # the DF11 file it comes from, relative to the checkpoint's root
    name: str
    dtype: str  # a safetensors dtype name: BF16 for every decoded weight
    shape: tuple[int, ...]
    data: bytearray  # little-endian, row-major


def _units(file: _File) -> Iterator[Entry | str]:
    """The file's contents in data order: a plain tensor (its Entry) or a block (its prefix), which
    stands where its first tensor was."""
    first = {min(parts.values(), key=lambda e: e.begin).name: prefix for prefix, parts in file.blocks.items()}
    plain = {e.name for e in file.plain}
    for e in file.header.entries:
        if e.name in plain:
            yield e
        elif e.name in first:
            yield first[e.name]


def _plan(file: _File, layout: _Layout) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of the BF16 file, in data order."""
    out: list[tuple[str, str, tuple[int, ...]]] = []
    for u in _units(file):
        out.extend([(u.name, u.dtype, u.shape)] if isinstance(u, Entry) else [(n, "BF16", s) for n, s in layout[u]])
    return out


def _items(file: _File, layout: _Layout, config: Df11Config) -> Iterator[Df11Tensor]:
    with file.path.open("rb") as f:
        for u in _units(file):
            if isinstance(u, Entry):
                data = read_range(f, file.header.data_start + u.begin, u.nbytes, str(file.path))
                yield Df11Tensor(file.rel, u.name, u.dtype, u.shape, data)
            else:
                for name, shape, words in _decode_named(f, file, u, layout[u], config):
                    yield Df11Tensor(file.rel, name, "BF16", shape, bytearray(words))


def _layouts(src: _Source) -> dict[str, _Layout]:
    model = _skeleton(src.model_config, src.root / "config.json")
    return {
        file.rel: {p: _block_weights(model, src.config, p, f"{file.path}: tensor {p!r}") for p in file.blocks}
        for file in src.files
    }


def iter_df11(path: str | Path, *, model_config: str | Path | None = None) -> Iterator[Df11Tensor]:
    """Every tensor of a DF11 checkpoint (a directory or one of its files), file by file in data order:
    the weights decoded to BF16 under their original names and shapes, and the tensors DF11 stored
    as they were. Decoded one DF11 block at a time, on the CPU.

    ``model_config``: the original model's config.json (or its directory), for DF11 checkpoints saved
    without one (``save_single_file=True``); it may also supply the ``dfloat11_config``.
    """
    src = _open_source(Path(path), model_config)
    layouts = _layouts(src)
    for file in src.files:
        yield from _items(file, layouts[file.rel], src.config)


def read_df11(path: str | Path, *, model_config: str | Path | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of a DF11 checkpoint: :func:`iter_df11` as torch tensors."""
    import torch

    for t in iter_df11(path, model_config=model_config):
        dtype = _torch_dtype(t.dtype)  # torch.frombuffer refuses an empty buffer
        flat = torch.frombuffer(t.data, dtype=dtype) if t.data else torch.empty(0, dtype=dtype)
        yield t.name, flat.reshape(t.shape)


def df11_sizes(path: str | Path) -> tuple[int, int]:
    """(bytes DF11 stores, bytes of the same tensors in BF16), from the headers alone (no decoding).

    Both count tensor data only (every DF11 tensor, including tables, gaps and positions), like
    ``floatzip inspect``'s totals.
    """
    src = Path(path)
    if not src.exists():
        raise InputError(f"{src}: no such file or directory")
    root, files = _root_and_files(src)
    scanned_files = [_scan_file(f, root) for f in files]
    if not any(f.blocks for f in scanned_files):
        raise FormatError(f"{src}: no DF11 block (no *.encoded_exponent tensor) in its safetensors files")
    df11 = bf16 = 0
    for scanned in scanned_files:
        df11 += scanned.header.data_size
        bf16 += sum(e.nbytes for e in scanned.plain)
        bf16 += sum(2 * parts["sign_mantissa"].nbytes for parts in scanned.blocks.values())
    return df11, bf16


# ---------------------------------------------------------------------------------------------
# converting


def _output_names(files: list[_File], stem: str) -> dict[str, str]:
    """The BF16 checkpoint's file names: transformers' (or diffusers', ``stem``) shard names, since DF11 keeps a
    partial ``model.safetensors`` beside its block files and the loader would load that file alone."""
    if len(files) == 1:
        name = Path(files[0].rel).name
        return {files[0].rel: f"{stem}.safetensors" if stem != "model" and name == "model.safetensors" else name}
    return {f.rel: f"{stem}-{i:05d}-of-{len(files):05d}.safetensors" for i, f in enumerate(files, 1)}


def _stem(model_config: Mapping[str, Any] | None) -> str:
    """``diffusion_pytorch_model`` for a diffusers model (its loader looks for that name), else ``model``."""
    return "diffusion_pytorch_model" if model_config and "_class_name" in model_config else "model"


def convert_df11(
    src: str | Path,
    dst: str | Path,
    *,
    model_config: str | Path | None = None,
    steps: int | None = None,
    progress: bool = False,
) -> ConvertReport:
    """Convert the DF11 checkpoint ``src`` into the new floatzip checkpoint directory ``dst``, bit for bit.

    The floatzip checkpoint decompresses to the BF16 checkpoint the DF11 one encodes: ``config.json``
    without ``dfloat11_config``, one safetensors shard per DF11 file (transformers' shard names and an
    index when there are several), every other file copied. Each shard is decoded into a scratch file
    beside ``dst``, compressed into the checkpoint and deleted before the next one: the extra disk
    needed is one shard in BF16, and memory stays near one DF11 block. The whole checkpoint is then
    verified (every tensor decoded, every checksum checked) before ``dst`` appears.
    """
    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    source = _open_source(src, model_config)
    layouts = _layouts(source)  # every block fits the architecture before anything is written
    report = ConvertReport(src, dst)
    stem = _stem(source.model_config)
    names = _output_names(source.files, stem)
    weight_map: dict[str, str] = {}
    total = 2 * sum(
        sum(e.nbytes for e in f.plain) + sum(parts["sign_mantissa"].nbytes for parts in f.blocks.values())
        for f in source.files
    )
    with (
        build_checkpoint(dst, report, total=total, steps=steps, progress=progress) as builder,
        tempfile.TemporaryDirectory(
            prefix=f"{staging_prefix(dst)}{os.getpid()}-bf16-", suffix=".tmp", dir=dst.parent
        ) as scratch_dir,
    ):
        scratch = Path(scratch_dir)
        for file in source.files:
            shard = scratch / names[file.rel]
            plan = _plan(file, layouts[file.rel])
            with shard.open("wb") as out:
                writer = StreamingWriter(out, [(n, d, len(s)) for n, d, s in plan], {"format": "pt"})
                for t in _items(file, layouts[file.rel], source.config):
                    writer.add(t.name, t.dtype, t.shape, t.data)
                    weight_map[t.name] = shard.name
                    report.bf16_bytes += len(t.data)
                writer.finish()
            report.weights_decoded += sum(len(w) for w in layouts[file.rel].values())
            report.df11_bytes += file.header.data_size
            builder.add(shard, shard.name)
            shard.unlink()
        extra: dict[str, bytes] = {}
        if len(source.files) > 1:  # DF11's own index (if any) lists only the tensors it left alone
            index = {"metadata": {"total_size": report.bf16_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            extra[f"{stem}.safetensors.index.json"] = (json.dumps(index, indent=2) + "\n").encode()
        if source.model_config:
            extra["config.json"] = (json.dumps(source.model_config, indent=2) + "\n").encode()
        for rel, data in extra.items():
            (scratch / rel).write_bytes(data)
            builder.add(scratch / rel, rel)
        for f in source.others:
            rel = f.relative_to(source.root).as_posix()
            builder.add(f, rel)
            report.files_copied.append(rel)
    report.seconds = time.perf_counter() - start  # reading the layout, decode, compress, verify
    return report


__all__ = [
    "ConvertReport",
    "Df11Config",
    "Df11Tensor",
    "convert_df11",
    "df11_hint",
    "df11_sizes",
    "is_df11_checkpoint",
    "iter_df11",
    "read_df11",
]
