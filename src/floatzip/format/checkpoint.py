"""Whole checkpoints: compress, decompress (byte for byte), verify, and read (docs/FORMAT.md §2).

Every write goes to a temporary sibling of the destination, is checked, and is renamed into place
only when complete: a failure leaves nothing half-written. Inputs are only ever read.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from floatzip import _core
from floatzip.codec.encode import compress_words
from floatzip.decode import decode_words
from floatzip.errors import FloatzipError, FormatError, InputError, IntegrityError, VersionError
from floatzip.format import groups, spec
from floatzip.format.blob import HEAD_BYTES, CompressedTensor, blob_head
from floatzip.format.safetensors_io import (
    MAX_HEADER_BYTES,
    Entry,
    Header,
    StreamingWriter,
    iter_files,
    not_safetensors_hint,
    parse_header,
    read_header,
    read_range,
    what_it_is,
)

if TYPE_CHECKING:
    import torch

_COPY_CHUNK = 16 << 20


@dataclass
class TensorReport:
    """What happened to one tensor."""

    file: str
    name: str
    dtype: str
    shape: tuple[int, ...]
    original_bytes: int
    stored_bytes: int
    encoded: bool  # stored as a blob of its own
    grouped: bool = False  # coded with other small tensors (its group's record, or a member mark)

    @property
    def ratio(self) -> float:
        return self.stored_bytes / self.original_bytes if self.original_bytes else 1.0


@dataclass
class CheckpointReport:
    """Totals of a compress, decompress or verify run."""

    source: Path
    destination: Path | None
    original_bytes: int = 0
    compressed_bytes: int = 0
    seconds: float = 0.0
    files: int = 0
    tensors: list[TensorReport] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / self.original_bytes if self.original_bytes else 1.0

    @property
    def tensor_ratio(self) -> float:
        """Stored / original bytes of the tensors alone (no headers, no other files)."""
        original = sum(t.original_bytes for t in self.tensors)
        return sum(t.stored_bytes for t in self.tensors) / original if original else 1.0

    @property
    def mb_per_s(self) -> float:
        """Original (uncompressed) megabytes per second."""
        return self.original_bytes / self.seconds / 1e6 if self.seconds else float("inf")


# ---------------------------------------------------------------------------------------------
# helpers


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            h.update(chunk)
    return h.hexdigest()


_log = logging.getLogger("floatzip")


def staging_prefix(dst: Path) -> str:
    """The name every temporary directory beside ``dst`` starts with, followed by the process id and a dash:
    what the next run to ``dst`` looks for to clean up after a killed one."""
    return f".{dst.name}.floatzip-"


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set straight back
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _remove_stale_staging(dst: Path) -> None:
    """Remove what an earlier run to ``dst`` left behind when it was killed (SIGKILL, power loss): staging
    directories named after a process that no longer exists on this machine."""
    pattern = re.compile(re.escape(staging_prefix(dst)) + r"(\d+)-[^/]*\.tmp")
    with contextlib.suppress(OSError):
        for entry in dst.parent.iterdir():
            m = pattern.fullmatch(entry.name)
            if m and entry.is_dir() and not entry.is_symlink() and not _pid_alive(int(m.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                _log.warning(
                    "floatzip: removed %s, left by an interrupted floatzip run (process %s)", entry, m.group(1)
                )


@contextlib.contextmanager
def _staging(dst: Path) -> Iterator[Path]:
    """A temporary directory beside ``dst``, renamed to ``dst`` on success and removed on failure (any
    exception, KeyboardInterrupt and the CLI's SIGTERM included). It is named after this process, so that
    the next run to ``dst`` removes it if this one is killed outright. ``dst`` follows the umask."""
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        raise InputError(f"{dst}: already exists (floatzip never overwrites; remove it or pick another path)")
    parent = dst.parent
    if not parent.is_dir():
        raise InputError(f"{parent}: no such directory")
    _remove_stale_staging(dst)
    tmp = Path(tempfile.mkdtemp(prefix=f"{staging_prefix(dst)}{os.getpid()}-", suffix=".tmp", dir=parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
        yield tmp
        if dst.exists():
            dst.rmdir()
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _allowed_roots(root: Path) -> list[Path]:
    """Where a file of the directory ``root`` may live once its symbolic links are followed: inside ``root``,
    or, for a Hugging Face cache snapshot (``.../snapshots/<revision>``), in that repository's ``blobs``."""
    real = root.resolve()
    roots = [real]
    if real.parent.name == "snapshots":
        roots.append(real.parent.parent / "blobs")
    return roots


def _check_regular(f: Path, root: Path, allowed: list[Path] | None, what: str, error: type[FloatzipError]) -> None:
    """Refuse a file that is not a regular file (a FIFO or device would hang the read) or, unless ``allowed``
    is None, a symbolic link leading out of ``root`` (``what`` names the directory in the message)."""
    if allowed is not None and f.is_symlink():
        target = f.resolve()
        if not any(target.is_relative_to(a) for a in allowed):
            raise error(f"{f}: a symbolic link to {target}, outside {what} {root}; floatzip reads only "
                        "files that belong to it")  # fmt: skip
    try:
        mode = f.stat().st_mode
    except OSError as exc:
        raise error(f"{f}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{f}: not a regular file (a FIFO, device or socket); floatzip reads only regular files")


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    # disable=None: shown on a terminal only, so logs and pipes get no carriage-return noise
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=None if enabled else True, leave=False)


def _source_files(src: Path) -> tuple[Path, list[Path]]:
    """The root and the files of a checkpoint source (a .safetensors file or a directory)."""
    if not src.exists():
        raise InputError(f"{src}: no such file or directory")
    if not src.is_file() and not src.is_dir():
        raise InputError(f"{src}: not a regular file or a directory (a FIFO, device or socket)")
    if src.is_file():
        if src.suffix != ".safetensors":
            what = what_it_is(src)
            raise InputError(f"{src}: not a .safetensors file or a model directory" + (f": {what}" if what else ""))
        return src.parent, [src]
    files = list(iter_files(src))
    for f in files:  # the user's own directory: links may lead anywhere, but only to regular files
        _check_regular(f, src, None, "the model directory", InputError)
    if not any(f.suffix == ".safetensors" for f in files):
        raise InputError(f"{src}: the directory holds no .safetensors file{not_safetensors_hint(files)}")
    return src, files


def _words(entry: Entry, data: bytearray) -> np.ndarray:
    layout = spec.LAYOUT_BY_NAME[entry.dtype]
    return np.frombuffer(data, dtype=np.dtype(f"<u{layout.nbytes}"))


def _should_encode(entry: Entry) -> bool:
    return entry.dtype in spec.LAYOUT_BY_NAME and int(np.prod(entry.shape)) >= spec.MIN_ENCODED_NUMEL


# ---------------------------------------------------------------------------------------------
# compress


def _groupable(entry: Entry) -> bool:
    """A float tensor too small for a blob of its own, but worth coding with its neighbours (§2.4)."""
    return entry.dtype in spec.LAYOUT_BY_NAME and not _should_encode(entry) and entry.nbytes >= groups.MIN_MEMBER_BYTES


def _plan_groups(header: Header) -> list[list[int]]:
    """The candidate groups of a file's small float tensors (indices in data order): one dtype each, members
    in data order, each group within the record's bounds."""
    out: list[list[int]] = []
    open_by_dtype: dict[str, tuple[list[int], int]] = {}
    for i, e in enumerate(header.entries):
        if not _groupable(e):
            continue
        members, numel = open_by_dtype.get(e.dtype, ([], 0))
        n = math.prod(e.shape)
        if members and (numel + n > groups.MAX_GROUP_NUMEL or len(members) == groups.MAX_MEMBERS):
            out.append(members)
            members, numel = [], 0
        members.append(i)
        open_by_dtype[e.dtype] = (members, numel + n)
    out += [members for members, _ in open_by_dtype.values()]
    return sorted(out)


def _group_record(
    fin: io.BufferedIOBase, header: Header, members: list[int], src: Path, steps: int | None, max_tables: int
) -> tuple[bytes, list[bytearray]]:
    """The record of ``members`` (§2.4) and their original bytes, read from the file."""
    entries = [header.entries[i] for i in members]
    datas = [read_range(fin, header.data_start + e.begin, e.nbytes, str(src)) for e in entries]
    layout = spec.LAYOUT_BY_NAME[entries[0].dtype]
    words = np.concatenate([_words(e, d) for e, d in zip(entries, datas, strict=True)])
    ct = compress_words(words, layout, (words.size,), steps=steps, max_tables=max_tables)
    return groups.GroupRecord.build([e.shape for e in entries], ct), datas


def _compress_file(
    src: Path, dst: Path, rel: str, report: CheckpointReport, bar: tqdm, steps: int | None, max_tables: int = 0
) -> None:
    header = read_header(src)
    n = len(header.entries)
    # small tensors coded together where that pays: decided first (each group coded once here and again
    # when written, so that only one group's bytes are held at a time), for the header's room
    stored_as: dict[int, tuple[int, int, int]] = {}  # tensor -> (its group's first tensor, its place, record length)
    group_of: dict[int, list[int]] = {}  # a group's first tensor -> its members
    with src.open("rb") as fin:
        for members in _plan_groups(header):
            record, datas = _group_record(fin, header, members, src, steps, max_tables)
            if len(record) + groups.MARK_BYTES * (len(members) - 1) < sum(len(d) for d in datas):
                group_of[members[0]] = members
                for k, i in enumerate(members):
                    stored_as[i] = (members[0], k, len(record))
    # the header's room, reserved before the tensors are read: a blob is stored only when smaller than the
    # tensor, so its length has at most the tensor's digits and no offset exceeds the original data size
    planned: list[tuple[str, str, int | tuple[int, ...]]] = []
    for i, e in enumerate(header.entries):
        if i in stored_as:
            first, _, length = stored_as[i]
            planned.append((e.name, "U8", (length if i == first else groups.MARK_BYTES,)))
        else:
            planned.append((e.name, "U8", (e.nbytes,)) if _should_encode(e) else (e.name, e.dtype, e.shape))
    recipe = header_recipe(header)
    meta = {
        spec.META_VERSION: str(spec.FORMAT_VERSION),
        spec.META_BLOBS: _b64(bytes((n + 7) // 8)),
        spec.META_CRCS: _b64(bytes(4 * (n + 1))),  # fixed widths: the real values are known only at the end
    }
    if recipe is not None:
        meta[spec.META_HEADER] = json.dumps(recipe, ensure_ascii=False, separators=(",", ":"))
    else:  # what this file's header says does not rebuild the original's bytes: store them whole
        meta[spec.META_ORIGINAL_HEADER] = _b64(zlib.compress(header.raw, 9))
    bits = bytearray((n + 7) // 8)
    crcs = bytearray()
    record_crc: dict[int, int] = {}  # a group's first tensor -> its record's checksum
    with src.open("rb") as fin, dst.open("wb") as fout:
        writer = StreamingWriter(fout, planned, meta, where=str(src), max_offset=header.data_size)
        for i, e in enumerate(header.entries):
            data = read_range(fin, header.data_start + e.begin, e.nbytes, str(src))
            stored: bytes | bytearray = data
            crc = None
            if i in stored_as:
                first, place, length = stored_as[i]
                if i == first:
                    stored, _ = _group_record(fin, header, group_of[first], src, steps, max_tables)
                    if len(stored) != length:
                        raise AssertionError(f"{src}: tensor {e.name!r}: a group coded twice differs")
                    record_crc[first] = int.from_bytes(stored[4:8], "little")
                else:
                    stored = groups.mark(record_crc[first], place)
                bits[i >> 3] |= 1 << (i & 7)
            elif _should_encode(e):
                layout = spec.LAYOUT_BY_NAME[e.dtype]
                ct = compress_words(_words(e, data), layout, e.shape, steps=steps, max_tables=max_tables)
                crc = ct.data_crc32  # a v2 blob's: CRC-32C of the original bytes
                blob = ct.stored_bytes()
                if len(blob) < len(data):
                    stored = blob
                    bits[i >> 3] |= 1 << (i & 7)
            crcs += (_core.crc32c(data) if crc is None else crc).to_bytes(4, "little")
            is_blob = stored is not data
            writer.add(e.name, "U8" if is_blob else e.dtype, (len(stored),) if is_blob else e.shape, stored)
            grouped = i in stored_as
            report.tensors.append(
                TensorReport(rel, e.name, e.dtype, e.shape, e.nbytes, len(stored), is_blob and not grouped, grouped)
            )
            bar.update(e.nbytes)
        crcs += _core.crc32c(header.raw).to_bytes(4, "little")
        writer.finish({**meta, spec.META_BLOBS: _b64(bytes(bits)), spec.META_CRCS: _b64(bytes(crcs))})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _json(value: object) -> str:
    """JSON as the safetensors library writes it (serde_json: no spaces, UTF-8 unescaped)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def rebuild_header(tensors: Iterable[tuple[str, str, tuple[int, ...]]], recipe: dict[str, object]) -> bytes:
    """The original header's bytes from its tensors' (name, dtype, shape) in data order and a format v3
    recipe (docs/FORMAT.md §2.2): offsets follow from the sizes and the order; the recipe holds the rest.
    ``recipe`` must have passed :func:`_check_recipe` (or come from :func:`header_recipe`)."""
    parts: list[str] = []
    pos = 0
    for name, dtype, shape in tensors:
        end = pos + math.prod(shape) * spec.SAFETENSORS_ITEMSIZE[dtype]
        info = f'{{"dtype":{_json(dtype)},"shape":{_json(list(shape))},"data_offsets":[{pos},{end}]}}'
        parts.append(f"{_json(name)}:{info}")
        pos = end
    order = recipe.get("order")
    if isinstance(order, list):
        parts = [parts[i] for i in order]
    if "metadata" in recipe:
        at = recipe.get("metadata_at", 0)
        parts.insert(at if isinstance(at, int) else 0, f'"__metadata__":{_json(recipe["metadata"])}')
    pad = recipe["pad"]
    return ("{" + ",".join(parts) + "}").encode() + b" " * (pad if isinstance(pad, int) else 0)


def header_recipe(header: Header) -> dict[str, object] | None:
    """What a format v3 file stores of ``header`` (an original file's) beside its own header: the trailing
    spaces, the metadata and, when they differ from data order, the key order; None when the rebuilt bytes
    would not be the original's exactly (then the whole header is stored)."""
    try:
        pairs = json.loads(header.raw.decode(), object_pairs_hook=lambda kv: kv)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        return None
    recipe: dict[str, object] = {"pad": len(header.raw) - len(header.raw.rstrip(b" "))}
    if "__metadata__" in keys:
        at = keys.index("__metadata__")
        recipe["metadata"] = json.loads(header.raw.decode())["__metadata__"]
        if at:
            recipe["metadata_at"] = at
    index = {e.name: i for i, e in enumerate(header.entries)}
    order = [index[k] for k in keys if k != "__metadata__"]
    if order != sorted(order):
        recipe["order"] = order
    rebuilt = rebuild_header(((e.name, e.dtype, e.shape) for e in header.entries), recipe)
    return recipe if rebuilt == header.raw else None  # checked here, before anything is written


class CheckpointBuilder:
    """Adds original files one at a time to a staged checkpoint; :func:`build_checkpoint` makes one.

    A file is read once, hashed and compressed as it is added, so a caller that produces the
    original files itself (the DF11 converter) can delete each one once it is added.
    """

    def __init__(
        self,
        tmp: Path,
        report: CheckpointReport,
        bar: tqdm,
        steps: int | None,
        progress: bool = False,
        max_tables: int = 0,
    ) -> None:
        self._progress = progress  # a verify bar after the compress bar (a large model's verify takes a while)
        self._tmp = tmp
        self._report = report
        self._bar = bar
        self._steps = steps
        self._max_tables = max_tables
        self._manifest: list[dict[str, object]] = []

    def add(self, f: Path, rel: str) -> None:
        """Add the original file ``f`` under the relative path ``rel``."""
        out = self._tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        entry: dict[str, object] = {"path": rel, "size": f.stat().st_size, "sha256": _sha256_file(f)}
        if f.suffix == ".safetensors":
            _compress_file(f, out, rel, self._report, self._bar, self._steps, self._max_tables)
            entry["kind"] = "safetensors"
            self._report.original_bytes += f.stat().st_size
            self._report.compressed_bytes += out.stat().st_size
        elif _is_model_config(rel, f):
            original = f.read_bytes()
            out.write_bytes(_with_quantization_config(original, f))
            entry["kind"] = "modified"
            entry["original_b64"] = base64.b64encode(original).decode()
        else:
            shutil.copyfile(f, out)
            entry["kind"] = "copy"
        self._manifest.append(entry)
        self._report.files += 1

    def _finish(self) -> None:
        listed = {str(e["path"]) for e in self._manifest}
        if spec.NOTE_NAME not in listed:
            (self._tmp / spec.NOTE_NAME).write_text(_note(self._report, listed))
        doc: dict[str, object] = {"format_version": spec.FORMAT_VERSION, "files": self._manifest}
        doc["manifest_sha256"] = _manifest_digest(doc)
        (self._tmp / spec.MANIFEST_NAME).write_text(json.dumps(doc, indent=1) + "\n")
        self._bar.close()  # the compress bar gives way to the verify bar
        _verify_dir(self._tmp, None, progress=self._progress)  # reload and compare before reporting success


def _note(report: CheckpointReport, listed: set[str]) -> str:
    """The checkpoint's own README: what it is, and how to load and restore it (not in the manifest)."""
    diffusers = "model_index.json" in listed or "diffusion_pytorch_model" in " ".join(listed)
    extra, snippet = (
        ("diffusers", 'from diffusers import DiffusionPipeline\n\npipe = DiffusionPipeline.from_pretrained('
         '"path/to/this/folder", dtype=torch.bfloat16)  # the dtype the weights were stored in')
        if diffusers else
        ("hf", 'from transformers import AutoModelForCausalLM\n\nmodel = AutoModelForCausalLM.from_pretrained('
         '"path/to/this/folder", device_map="auto")')
    )  # fmt: skip
    return f"""# A floatzip checkpoint

This folder holds a model compressed losslessly by [floatzip](https://pypi.org/project/floatzip/)
(format version {spec.FORMAT_VERSION}): {report.compressed_bytes / 1e9:.3f} GB of safetensors for
{report.original_bytes / 1e9:.3f} GB originally ({100 * report.ratio:.2f}%). Every weight decodes to its
original bits, and each file restores to its original sha256 (listed in `floatzip.json`).

## Run it straight from the compressed weights

Without floatzip, transformers and diffusers stop with "Unknown quantization type". Install floatzip with
its `{extra}` extra and import it first:

```bash
pip install "floatzip[{extra}]"
```

```python
import torch, floatzip  # registers quant_method "floatzip" with transformers and diffusers
{snippet}
```

## Restore the original files

```bash
floatzip verify path/to/this/folder                 # decode everything, check every checksum
floatzip decompress path/to/this/folder restored/   # the original files, byte for byte
```

This file is written by `floatzip compress` and is not one of the original files.
"""


@contextlib.contextmanager
def build_checkpoint(
    dst: Path, report: CheckpointReport, *, total: int, steps: int | None, progress: bool, max_tables: int = 0
) -> Iterator[CheckpointBuilder]:
    """A :class:`CheckpointBuilder` staged beside ``dst``; on a clean exit the manifest is written, the
    whole checkpoint is verified, and it is renamed to ``dst``. On an error nothing is left."""
    start = time.perf_counter()
    with _staging(dst) as tmp, _progress(total, "compress", progress) as bar:
        builder = CheckpointBuilder(tmp, report, bar, steps, progress, max_tables)
        yield builder
        builder._finish()
    report.seconds = time.perf_counter() - start


def compress_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    steps: int | None = None,
    max_tables: int = 0,
    progress: bool = False,
) -> CheckpointReport:
    """Compress a ``.safetensors`` file or a model directory into the new directory ``dst``.

    ``steps`` sets every blob's tile (docs/FORMAT.md §1.4); the default suits each dtype. ``max_tables`` caps
    each tensor's code tables (§1.2): 0 lets the encoder use up to 16 where they pay, 1 compresses faster
    (about 1.5x here, BENCHMARKS.md) for a slightly larger file."""
    src, dst = Path(src), Path(dst)
    root, files = _source_files(src)
    _refuse_nested(src, dst)
    report = CheckpointReport(src, dst)
    total = sum(f.stat().st_size for f in files if f.suffix == ".safetensors")
    for f in files:  # refuse a bad input before anything is written
        if f.suffix == ".safetensors":
            read_header(f)
    with build_checkpoint(dst, report, total=total, steps=steps, progress=progress, max_tables=max_tables) as builder:
        for f in files:
            builder.add(f, f.relative_to(root).as_posix())
    return report


def _refuse_nested(src: Path, dst: Path) -> None:
    """DST inside a source directory would change the source and be read into the next run's output."""
    if src.is_dir() and dst.resolve().is_relative_to(src.resolve()):
        raise InputError(f"{dst}: inside the source directory {src}; put the output somewhere else")


def _config_matches(stored: bytes, original: bytes) -> bool:
    """Whether a checkpoint's config.json is its original plus floatzip's quantization_config (of any
    version this floatzip reads) and nothing else changed."""
    try:
        ours, theirs = json.loads(stored), json.loads(original)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return False
    qc = ours.pop("quantization_config", None)
    return (
        isinstance(qc, dict)
        and qc.get("quant_method") == spec.QUANT_METHOD
        and qc.get("format_version") in spec.READ_VERSIONS
        and json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)  # NaN == NaN here
    )


def _is_model_config(rel: str, f: Path) -> bool:
    """The checkpoint's own config.json, or a component's (a diffusers pipeline's transformer/, vae/,
    text_encoder/...): a config.json beside safetensors weights, which a loader reads to find floatzip."""
    return rel == "config.json" or (Path(rel).name == "config.json" and any(f.parent.glob("*.safetensors")))


def _with_quantization_config(original: bytes, path: Path) -> bytes:
    try:
        config = json.loads(original)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc.args[0]})") from None
    if not isinstance(config, dict):
        raise FormatError(f"{path}: not a JSON object")
    if qc := config.get("quantization_config"):
        method = qc.get("quant_method", "?") if isinstance(qc, dict) else qc
        raise InputError(f"{path}: the model is already quantized ({method}); floatzip needs the original weights")
    config["quantization_config"] = {"quant_method": spec.QUANT_METHOD, "format_version": spec.FORMAT_VERSION}
    return (json.dumps(config, indent=2) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# reading compressed files


@dataclass(frozen=True)
class CompressedFile:
    """A floatzip-compressed safetensors file, its own header and the original's."""

    path: Path
    header: Header
    original: Header
    encoded: frozenset[str]
    crcs: dict[str, int] | None = None  # by name, CRC-32C of each tensor's original bytes (none in older files)
    records: dict[str, groups.GroupRecord] = field(default_factory=dict)  # by its group's first tensor (v4)
    members: dict[str, tuple[str, int]] = field(default_factory=dict)  # tensor -> (its record's tensor, place)

    def member_layout(self, name: str) -> tuple[str, tuple[int, ...]]:
        """The original dtype and shape of a tensor stored in a group."""
        first, place = self.members[name]
        record = self.records[first]
        return record.layout.name, record.shapes[place]


def open_compressed(path: Path) -> CompressedFile:
    """Read and cross-check the headers of a compressed safetensors file."""
    header = read_header(path)
    meta = header.metadata
    if spec.META_VERSION not in meta:
        raise FormatError(f"{path}: not a floatzip-compressed safetensors file (no {spec.META_VERSION} metadata)")
    if meta[spec.META_VERSION] not in {str(v) for v in spec.READ_VERSIONS}:
        raise VersionError(
            f"{path}: floatzip format version {meta[spec.META_VERSION]} is not supported by this floatzip "
            f"(it reads versions {', '.join(map(str, spec.READ_VERSIONS))}); upgrade floatzip"
        )
    crcs: dict[str, int] | None
    records: dict[str, groups.GroupRecord] = {}
    members: dict[str, tuple[str, int]] = {}
    if meta[spec.META_VERSION] in ("3", "4"):
        flagged, crcs, header_crc = _v3_tensors(header, path)
        encoded = flagged
        if meta[spec.META_VERSION] == "4":
            encoded, records, members = _v4_groups(header, flagged, path)
        original_raw = _v3_original_header(header, encoded, records, members, path)
        if _core.crc32c(original_raw) != header_crc:  # names, order, dtypes, shapes: what a checksum of bytes misses
            raise IntegrityError(
                f"{path}: the original header does not match its checksum (tensors renamed, reordered or retyped)"
            )
    else:
        try:
            names = json.loads(meta[spec.META_ENCODED])
        except (KeyError, ValueError, RecursionError) as exc:
            raise FormatError(f"{path}: bad floatzip metadata ({type(exc).__name__}: {str(exc)[:200]})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise FormatError(f"{path}: bad floatzip metadata (encoded names)")
        encoded = frozenset(names)
        original_raw = _stored_original_header(header, path)
        crcs = _crc_map(meta, header.by_name().keys(), path)
    original = parse_header(original_raw, f"{path} (original header)")
    ours, theirs = header.by_name(), original.by_name()
    if ours.keys() != theirs.keys():
        raise FormatError(f"{path}: its tensors differ from the original header's")
    for name, e in ours.items():
        o = theirs[name]
        if name in members:
            continue  # its dtype and shape came from its record
        if name in encoded:
            if e.dtype != "U8" or len(e.shape) != 1 or o.dtype not in spec.LAYOUT_BY_NAME:
                raise FormatError(f"{path}: tensor {name!r} is listed as encoded but is not a blob")
        elif (e.dtype, e.shape) != (o.dtype, o.shape):
            raise FormatError(f"{path}: tensor {name!r} differs from the original header")
    return CompressedFile(path, header, original, encoded, crcs, records, members)


def _stored_original_header(header: Header, path: Path) -> bytes:
    """The original header stored whole (versions 1 and 2; version 3 where it could not be rebuilt)."""
    # inflated within the safetensors header cap (a zlib bomb stops there), and holding no more tensors than
    # this file (checked before it is parsed, so that a crafted one cannot make millions of objects)
    limit = MAX_HEADER_BYTES
    try:
        inflate = zlib.decompressobj()
        raw = inflate.decompress(base64.b64decode(header.metadata[spec.META_ORIGINAL_HEADER], validate=True), limit)
    except (KeyError, ValueError, zlib.error) as exc:
        raise FormatError(f"{path}: bad floatzip metadata ({type(exc).__name__}: {str(exc)[:200]})") from None
    if inflate.unconsumed_tail or not inflate.eof:
        raise FormatError(f"{path}: bad floatzip metadata (the original header is truncated or over {limit} bytes)")
    if raw.count(b'"data_offsets"') > len(header.entries):
        raise FormatError(f"{path}: bad floatzip metadata (the original header lists more tensors than the file)")
    return raw


def _b64_field(header: Header, key: str, nbytes: int, path: Path) -> bytes:
    try:
        data = base64.b64decode(header.metadata[key], validate=True)
    except (KeyError, ValueError):
        data = None
    if data is None or len(data) != nbytes:
        raise FormatError(f"{path}: bad floatzip metadata ({key})")
    return data


def _v3_tensors(header: Header, path: Path) -> tuple[frozenset[str], dict[str, int], int]:
    """A version 3 file's blobs, its tensors' checksums by name, and its original header's checksum
    (docs/FORMAT.md §2.2)."""
    names = [e.name for e in header.entries]
    n = len(names)
    bits = _b64_field(header, spec.META_BLOBS, (n + 7) // 8, path)
    if n % 8 and bits[-1] >> (n % 8):
        raise FormatError(f"{path}: bad floatzip metadata ({spec.META_BLOBS}: bits past the last tensor)")
    encoded = frozenset(name for i, name in enumerate(names) if bits[i >> 3] >> (i & 7) & 1)
    packed = _b64_field(header, spec.META_CRCS, 4 * (n + 1), path)
    values = [int.from_bytes(packed[4 * i : 4 * i + 4], "little") for i in range(n + 1)]
    return encoded, dict(zip(names, values[:n], strict=True)), values[n]


def _blob_dtype_shape(f: io.BufferedIOBase, header: Header, e: Entry, path: Path) -> tuple[str, tuple[int, ...]]:
    """The original dtype and shape a blob records in its header (docs/FORMAT.md §1.4, §2.3), checked."""
    head = read_range(f, header.data_start + e.begin, min(e.nbytes, HEAD_BYTES), str(path))
    layout, shape, _ = blob_head(head, f"{path}: tensor {e.name!r}")
    return layout.name, shape


def _v4_groups(
    header: Header, flagged: frozenset[str], path: Path
) -> tuple[frozenset[str], dict[str, groups.GroupRecord], dict[str, tuple[str, int]]]:
    """A version 4 file's flagged tensors sorted into blobs, group records and members (§2.4), every record
    parsed and every member mark resolved: each place of each record taken by exactly one tensor."""
    blobs: set[str] = set()
    records: dict[str, groups.GroupRecord] = {}
    members: dict[str, tuple[str, int]] = {}
    latest: dict[int, str] = {}  # record checksum -> the latest record so far with it (marks follow theirs)
    with path.open("rb") as f:
        for e in header.entries:
            if e.name not in flagged:
                continue
            where = f"{path}: tensor {e.name!r}"
            if e.dtype != "U8" or len(e.shape) != 1:
                raise FormatError(f"{where}: marked as floatzip's but not stored as bytes (U8, one dimension)")
            head = read_range(f, header.data_start + e.begin, min(e.nbytes, 4), str(path))
            what = groups.kind(head)
            if what == "blob":
                blobs.add(e.name)
            elif what == "record":
                if e.nbytes > groups.MAX_RECORD_BYTES:  # read whole below: bounded first
                    raise FormatError(f"{where}: a group record of {e.nbytes} bytes, over {groups.MAX_RECORD_BYTES}")
                record = groups.GroupRecord.from_bytes(read_range(f, header.data_start + e.begin, e.nbytes, str(path)),
                                                       where)  # fmt: skip
                records[e.name] = record
                members[e.name] = (e.name, 0)
                latest[record.crc] = e.name
            elif what == "mark":
                mark = read_range(f, header.data_start + e.begin, min(e.nbytes, groups.MARK_BYTES + 1), str(path))
                crc, place = groups.read_mark(mark, where)
                first = latest.get(crc)
                if first is None or place >= len(records[first].shapes):
                    raise FormatError(f"{where}: a group member mark names no earlier group record's member")
                members[e.name] = (first, place)
            else:
                raise FormatError(f"{where}: marked as floatzip's but is no blob, group record or member mark")
    taken = {(first, place) for first, place in members.values()}
    if len(taken) != len(members) or len(taken) != sum(len(r.shapes) for r in records.values()):
        raise FormatError(f"{path}: bad group records (a member missing or stored twice)")
    return frozenset(blobs), records, members


def member_words(cf: CompressedFile, first: str) -> dict[str, np.ndarray]:
    """The members of the group record stored as ``first``, decoded, each checked against its checksum: by
    tensor name, flat words of the dtype's width."""
    record = cf.records[first]
    words = np.empty(record.blob.numel, dtype=np.dtype(f"<u{record.layout.nbytes}"))
    where = f"{cf.path}: tensor {first!r} (group record)"
    try:
        decode_words(record.blob, words, verify=True)
    except IntegrityError as exc:
        raise IntegrityError(f"{where} {exc}") from None
    parts = record.split(words)
    out: dict[str, np.ndarray] = {}
    for name, (f, place) in cf.members.items():
        if f != first:
            continue
        out[name] = parts[place]
        if cf.crcs is None or _core.crc32c(parts[place]) != cf.crcs[name]:
            raise IntegrityError(
                f"{cf.path}: tensor {name!r}: checksum mismatch (corrupt, or stored under the wrong name)"
            )
    return out


def member_tensors(cf: CompressedFile) -> dict[str, torch.Tensor]:
    """Every tensor of ``cf`` stored in a group, decoded and checked, in its original dtype and shape."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for first in cf.records:
        for name, words in member_words(cf, first).items():
            dtype, shape = cf.member_layout(name)
            layout = spec.LAYOUT_BY_NAME[dtype]
            out[name] = torch.from_numpy(words.copy()).view(layout.torch_dtype).reshape(shape)
    return out


def _v3_original_header(
    header: Header,
    encoded: frozenset[str],
    records: dict[str, groups.GroupRecord],
    members: dict[str, tuple[str, int]],
    path: Path,
) -> bytes:
    """A version 3 file's original header: rebuilt from its own (blobs' dtypes and shapes from the blobs'
    headers) and the stored recipe, or stored whole where the writer could not rebuild it."""
    meta = header.metadata
    if (spec.META_HEADER in meta) == (spec.META_ORIGINAL_HEADER in meta):
        which = f"{spec.META_HEADER} and {spec.META_ORIGINAL_HEADER}"
        raise FormatError(f"{path}: bad floatzip metadata (it needs exactly one of {which})")
    if spec.META_ORIGINAL_HEADER in meta:
        return _stored_original_header(header, path)
    recipe = _check_recipe(meta[spec.META_HEADER], len(header.entries), path)
    tensors: list[tuple[str, str, tuple[int, ...]]] = []
    with path.open("rb") as f:
        for e in header.entries:
            if e.name in members:
                first, place = members[e.name]
                dtype, shape = records[first].layout.name, records[first].shapes[place]
            elif e.name in encoded:
                dtype, shape = _blob_dtype_shape(f, header, e, path)
            else:
                dtype, shape = e.dtype, e.shape
            tensors.append((e.name, dtype, shape))
    return rebuild_header(tensors, recipe)


def _check_recipe(text: str, n: int, path: Path) -> dict[str, object]:
    """A version 3 header recipe from an untrusted file: every field of the right type and in range."""
    bad = FormatError(f"{path}: bad floatzip metadata ({spec.META_HEADER})")
    try:
        recipe = json.loads(text)
    except (ValueError, RecursionError):
        raise bad from None
    if not isinstance(recipe, dict) or not set(recipe) <= {"pad", "metadata", "metadata_at", "order"}:
        raise bad

    def index(v: object, top: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top

    pad, at, order = recipe.get("pad"), recipe.get("metadata_at", 0), recipe.get("order")
    if not index(pad, MAX_HEADER_BYTES) or not index(at, n) or ("metadata_at" in recipe and "metadata" not in recipe):
        raise bad
    if order is not None and not (
        isinstance(order, list) and len(order) == n and all(index(i, n - 1) for i in order) and len(set(order)) == n
    ):
        raise bad
    return recipe


def _crc_map(meta: dict[str, str], names: Iterable[str], path: Path) -> dict[str, int] | None:
    """A version 2 file's checksums by name (a JSON object); None in files written before floatzip kept them."""
    if spec.META_CRC32C not in meta:
        return None
    try:
        crcs = json.loads(meta[spec.META_CRC32C])
    except (ValueError, RecursionError):
        crcs = None
    if (
        not isinstance(crcs, dict)
        or crcs.keys() != set(names)
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 32 for v in crcs.values())
    ):
        raise FormatError(f"{path}: bad floatzip metadata ({spec.META_CRC32C})")
    return crcs


def check_stored_tensors(cf: CompressedFile, f: io.BufferedIOBase) -> None:
    """Check every tensor of ``cf`` against its stored checksum without decoding: a plain tensor's bytes,
    a blob's own record of its original bytes (so that a blob stored under another tensor's name is caught).
    What a loader runs before it uses the file; nothing to check in files written before the checksums."""
    if cf.crcs is None:
        return
    for first in cf.records:  # small, and checkable only decoded
        member_words(cf, first)
    for e in cf.header.entries:
        where = f"{cf.path}: tensor {e.name!r}"
        if e.name in cf.members:
            continue
        if e.name in cf.encoded:
            head = read_range(f, cf.header.data_start + e.begin, min(e.nbytes, HEAD_BYTES), str(cf.path))
            _, _, crc = blob_head(head, where)
        else:
            crc = _core.crc32c(read_range(f, cf.header.data_start + e.begin, e.nbytes, str(cf.path)))
        if crc != cf.crcs[e.name]:
            raise IntegrityError(f"{where}: checksum mismatch (corrupt, or stored under the wrong name)")


def read_blob(cf: CompressedFile, f: io.BufferedIOBase, name: str) -> CompressedTensor:
    """Parse one encoded tensor of ``cf`` and check it against the original header."""
    e = cf.header.by_name()[name]
    where = f"{cf.path}: tensor {name!r}"
    ct = CompressedTensor.from_bytes(read_range(f, cf.header.data_start + e.begin, e.nbytes, str(cf.path)), where)
    o = cf.original.by_name()[name]
    if ct.layout.name != o.dtype or ct.shape != o.shape:
        raise FormatError(
            f"{where}: the blob holds {ct.layout.name}{list(ct.shape)}, the original {o.dtype}{list(o.shape)}"
        )
    return ct


def read_compressed_file(path: str | Path) -> dict[str, CompressedTensor | torch.Tensor]:
    """Every tensor of a compressed file: blobs parsed (not decoded), the others as tensors."""
    path = Path(path)
    cf = open_compressed(path)
    out: dict[str, CompressedTensor | torch.Tensor] = {}
    with path.open("rb") as f:
        check_stored_tensors(cf, f)
        for name in cf.encoded:
            out[name] = read_blob(cf, f, name)
    out.update(member_tensors(cf))
    plain = [n for n in cf.header.by_name() if n not in cf.encoded and n not in cf.members]
    if plain:
        try:
            with safe_open(str(path), framework="pt") as st:
                for name in plain:
                    out[name] = st.get_tensor(name)
        except SafetensorError as exc:
            raise FormatError(f"{path}: {exc}") from None
    return out


def _original_stream(cf: CompressedFile, check_crc: bool) -> Iterator[bytes | bytearray | memoryview]:
    """The original file's bytes, piece by piece: length, header, then each tensor in data order."""
    yield len(cf.original.raw).to_bytes(8, "little") + cf.original.raw
    ours = cf.header.by_name()
    pending: dict[str, np.ndarray] = {}  # decoded members of the groups met so far, until each is yielded
    with cf.path.open("rb") as f:
        for o in cf.original.entries:
            wrong = IntegrityError(
                f"{cf.path}: tensor {o.name!r}: checksum mismatch (corrupt, or stored under the wrong name)"
            )
            if o.name in cf.members:
                first, _ = cf.members[o.name]
                if o.name == first:
                    pending.update(member_words(cf, first))  # checked, each member, against its checksum
                yield memoryview(pending.pop(o.name).view(np.uint8).data)
            elif o.name in cf.encoded:
                ct = read_blob(cf, f, o.name)
                if cf.crcs is not None and ct.data_crc32 != cf.crcs[o.name]:
                    raise wrong
                words = np.empty(ct.numel, dtype=np.dtype(f"<u{ct.layout.nbytes}"))
                try:
                    decode_words(ct, words, verify=check_crc)
                except IntegrityError as exc:
                    raise IntegrityError(f"{cf.path}: tensor {o.name!r} {exc}") from None
                yield memoryview(words.view(np.uint8).data)
            else:
                e = ours[o.name]
                data = read_range(f, cf.header.data_start + e.begin, e.nbytes, str(cf.path))
                if cf.crcs is not None and _core.crc32c(data) != cf.crcs[o.name]:
                    raise wrong
                yield data


# ---------------------------------------------------------------------------------------------
# decompress and verify


def _manifest_digest(doc: dict[str, object]) -> str:
    """sha256 of the manifest's content without its own digest, in a canonical JSON form (docs/FORMAT.md §2)."""
    body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _bad_path(rel: object) -> bool:
    if not isinstance(rel, str) or not rel or any(ord(ch) < 32 or ord(ch) == 127 for ch in rel):
        return True  # control characters (a newline, a NUL) in a file name are corruption, not a model
    parts = rel.split("/")
    return rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts) or rel == spec.MANIFEST_NAME


def _check_entry(path: Path, entry: object, seen: set[str]) -> dict[str, object]:
    if not isinstance(entry, dict):
        raise FormatError(f"{path}: bad manifest entry {entry!r}")
    rel, size, digest = entry.get("path"), entry.get("size"), entry.get("sha256")
    problem = None
    if _bad_path(rel):
        problem = "bad path"
    elif rel in seen:
        problem = "a path listed twice"
    elif entry.get("kind") not in ("safetensors", "copy", "modified"):
        problem = "unknown kind"
    elif not isinstance(size, int) or isinstance(size, bool) or size < 0:
        problem = "bad size"
    elif not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        problem = "bad sha256"
    elif entry["kind"] == "modified" and not isinstance(entry.get("original_b64"), str):
        problem = "no stored original"
    if problem:
        raise FormatError(f"{path}: bad manifest entry ({problem}): {json.dumps(entry)[:200]}")
    seen.add(str(rel))
    return entry


def _load_manifest(root: Path) -> list[dict[str, object]]:
    path = root / spec.MANIFEST_NAME
    if not root.is_dir():
        if root.is_file():
            raise InputError(f"{root}: a compressed checkpoint is a directory (holding {spec.MANIFEST_NAME})")
        raise InputError(f"{root}: no such directory")
    if not path.is_file():
        raise FormatError(f"{root}: not a floatzip checkpoint (no {spec.MANIFEST_NAME})")
    if path.stat().st_size > spec.MAX_MANIFEST_BYTES:
        raise FormatError(
            f"{path}: manifest of {path.stat().st_size} bytes, over the {spec.MAX_MANIFEST_BYTES} allowed"
        )
    try:
        doc = json.loads(path.read_bytes())
        version = doc["format_version"]
        files = doc["files"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise FormatError(f"{path}: bad manifest ({type(exc).__name__}: {str(exc)[:200]})") from None
    if isinstance(version, bool) or version not in spec.READ_VERSIONS:
        raise VersionError(
            f"{path}: floatzip format version {str(version)[:20]} is not supported by this floatzip "
            f"(it reads versions {', '.join(map(str, spec.READ_VERSIONS))}); upgrade floatzip"
        )
    if not isinstance(files, list):
        raise FormatError(f"{path}: bad manifest (files is not a list)")
    # written since floatzip 0.2 (manifests of earlier checkpoints have none)
    if "manifest_sha256" in doc and doc["manifest_sha256"] != _manifest_digest(doc):
        raise IntegrityError(f"{path}: the manifest is corrupt (its sha256 does not match)")
    seen: set[str] = set()
    return [_check_entry(path, entry, seen) for entry in files]


def _restore(root: Path, entry: dict[str, object], bar: tqdm) -> Iterator[bytes | bytearray | memoryview]:
    """The original bytes of one manifest entry, piece by piece."""
    rel = str(entry["path"])
    stored = root / rel
    if entry["kind"] == "modified":
        try:
            original = base64.b64decode(str(entry["original_b64"]), validate=True)
        except (KeyError, ValueError):
            raise FormatError(f"{root / spec.MANIFEST_NAME}: bad stored original of {rel}") from None
        # what the loader reads is the stored file: it must be the original plus floatzip's one change
        _check_regular(stored, root, _allowed_roots(root), "the checkpoint", FormatError)
        if stored.stat().st_size > spec.MAX_MANIFEST_BYTES or not _config_matches(stored.read_bytes(), original):
            raise IntegrityError(f"{stored}: differs from the original {rel} with floatzip's quantization_config")
        yield original
        return
    if not stored.exists() and not stored.is_symlink():
        raise FormatError(f"{stored}: missing from the checkpoint")
    _check_regular(stored, root, _allowed_roots(root), "the checkpoint", FormatError)
    if entry["kind"] == "copy":
        with stored.open("rb") as f:
            while chunk := f.read(_COPY_CHUNK):
                yield chunk
        return
    for piece in _original_stream(open_compressed(stored), check_crc=True):
        bar.update(len(piece))
        yield piece


def _verify_dir(root: Path, out: Path | None, *, progress: bool) -> CheckpointReport:
    files = _load_manifest(root)
    report = CheckpointReport(root, out)
    start = time.perf_counter()
    total = sum(int(str(e["size"])) for e in files if e["kind"] == "safetensors")
    with _progress(total, "decompress" if out else "verify", progress) as bar:
        for entry in files:
            rel = str(entry["path"])
            h = hashlib.sha256()
            size = 0
            if out is not None:
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.ExitStack() as stack:
                target = stack.enter_context((out / rel).open("wb")) if out is not None else None
                for piece in _restore(root, entry, bar):
                    h.update(piece)
                    size += len(piece)
                    if target is not None:
                        target.write(piece)
            if size != entry.get("size") or h.hexdigest() != entry.get("sha256"):
                raise IntegrityError(
                    f"{root / rel}: restores to different bytes than the original {rel} (checksum mismatch)"
                )
            report.files += 1
            report.original_bytes += size
            if entry["kind"] == "safetensors":
                report.compressed_bytes += (root / rel).stat().st_size
    report.seconds = time.perf_counter() - start
    return report


def decompress_checkpoint(src: str | Path, dst: str | Path, *, progress: bool = False) -> CheckpointReport:
    """Restore the original files of a compressed checkpoint, byte for byte, into the new directory ``dst``."""
    src, dst = Path(src), Path(dst)
    _load_manifest(src)
    with _staging(dst) as tmp:
        report = _verify_dir(src, tmp, progress=progress)
    report.destination = dst
    return report


def verify_checkpoint(path: str | Path, *, progress: bool = False) -> CheckpointReport:
    """Decode every tensor and check every checksum; raise a FloatzipError on the first problem."""
    return _verify_dir(Path(path), None, progress=progress)


def is_floatzip_checkpoint(path: str | Path) -> bool:
    return (Path(path) / spec.MANIFEST_NAME).is_file()


__all__ = [
    "CheckpointBuilder",
    "CheckpointReport",
    "CompressedFile",
    "TensorReport",
    "build_checkpoint",
    "check_stored_tensors",
    "compress_checkpoint",
    "decompress_checkpoint",
    "is_floatzip_checkpoint",
    "member_tensors",
    "member_words",
    "open_compressed",
    "read_blob",
    "read_compressed_file",
    "staging_prefix",
    "verify_checkpoint",
]
