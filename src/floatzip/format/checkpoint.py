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
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from floatzip.codec.encode import compress_words
from floatzip.decode import decode_words
from floatzip.errors import FormatError, InputError, IntegrityError, VersionError
from floatzip.format import spec
from floatzip.format.blob import CompressedTensor
from floatzip.format.safetensors_io import (
    Entry,
    Header,
    StreamingWriter,
    iter_files,
    parse_header,
    read_header,
    read_range,
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
    encoded: bool

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


@contextlib.contextmanager
def _staging(dst: Path) -> Iterator[Path]:
    """A temporary directory beside ``dst``, renamed to ``dst`` on success and removed on failure."""
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        raise InputError(f"{dst}: already exists (floatzip never overwrites; remove it or pick another path)")
    parent = dst.parent
    if not parent.is_dir():
        raise InputError(f"{parent}: no such directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        if dst.exists():
            dst.rmdir()
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    # disable=None: shown on a terminal only, so logs and pipes get no carriage-return noise
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=None if enabled else True, leave=False)


def _source_files(src: Path) -> tuple[Path, list[Path]]:
    """The root and the files of a checkpoint source (a .safetensors file or a directory)."""
    if not src.exists():
        raise InputError(f"{src}: no such file or directory")
    if src.is_file():
        if src.suffix != ".safetensors":
            raise InputError(f"{src}: not a .safetensors file or a model directory")
        return src.parent, [src]
    files = list(iter_files(src))
    if not any(f.suffix == ".safetensors" for f in files):
        raise InputError(f"{src}: the directory holds no .safetensors file")
    return src, files


def _words(entry: Entry, data: bytearray) -> np.ndarray:
    layout = spec.LAYOUT_BY_NAME[entry.dtype]
    return np.frombuffer(data, dtype=np.dtype(f"<u{layout.nbytes}"))


def _should_encode(entry: Entry) -> bool:
    return entry.dtype in spec.LAYOUT_BY_NAME and int(np.prod(entry.shape)) >= spec.MIN_ENCODED_NUMEL


# ---------------------------------------------------------------------------------------------
# compress


def _compress_file(src: Path, dst: Path, rel: str, report: CheckpointReport, bar: tqdm, steps: int | None) -> None:
    header = read_header(src)
    candidates = [e for e in header.entries if _should_encode(e)]
    planned = [(e.name, "U8" if _should_encode(e) else e.dtype, len(e.shape)) for e in header.entries]
    meta = {
        spec.META_VERSION: str(spec.FORMAT_VERSION),
        spec.META_ENCODED: json.dumps([e.name for e in candidates]),
        spec.META_ORIGINAL_HEADER: base64.b64encode(zlib.compress(header.raw, 9)).decode(),
    }
    encoded: list[str] = []
    with src.open("rb") as fin, dst.open("wb") as fout:
        writer = StreamingWriter(fout, planned, meta)
        for e in header.entries:
            data = read_range(fin, header.data_start + e.begin, e.nbytes, str(src))
            stored: bytes | bytearray = data
            if _should_encode(e):
                layout = spec.LAYOUT_BY_NAME[e.dtype]
                blob = compress_words(_words(e, data), layout, e.shape, steps=steps).to_bytes()
                if len(blob) < len(data):
                    stored = blob
                    encoded.append(e.name)
            is_blob = stored is not data
            writer.add(e.name, "U8" if is_blob else e.dtype, (len(stored),) if is_blob else e.shape, stored)
            report.tensors.append(TensorReport(rel, e.name, e.dtype, e.shape, e.nbytes, len(stored), is_blob))
            bar.update(e.nbytes)
        writer.finish({**meta, spec.META_ENCODED: json.dumps(encoded)})


class CheckpointBuilder:
    """Adds original files one at a time to a staged checkpoint; :func:`build_checkpoint` makes one.

    A file is read once, hashed and compressed as it is added, so a caller that produces the
    original files itself (the DF11 converter) can delete each one once it is added.
    """

    def __init__(self, tmp: Path, report: CheckpointReport, bar: tqdm, steps: int | None) -> None:
        self._tmp = tmp
        self._report = report
        self._bar = bar
        self._steps = steps
        self._manifest: list[dict[str, object]] = []

    def add(self, f: Path, rel: str) -> None:
        """Add the original file ``f`` under the relative path ``rel``."""
        out = self._tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        entry: dict[str, object] = {"path": rel, "size": f.stat().st_size, "sha256": _sha256_file(f)}
        if f.suffix == ".safetensors":
            _compress_file(f, out, rel, self._report, self._bar, self._steps)
            entry["kind"] = "safetensors"
            self._report.original_bytes += f.stat().st_size
            self._report.compressed_bytes += out.stat().st_size
        elif rel == "config.json":
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
        doc = {"format_version": spec.FORMAT_VERSION, "files": self._manifest}
        (self._tmp / spec.MANIFEST_NAME).write_text(json.dumps(doc, indent=1) + "\n")
        _verify_dir(self._tmp, None, progress=False)  # reload and compare before reporting success


@contextlib.contextmanager
def build_checkpoint(
    dst: Path, report: CheckpointReport, *, total: int, steps: int | None, progress: bool
) -> Iterator[CheckpointBuilder]:
    """A :class:`CheckpointBuilder` staged beside ``dst``; on a clean exit the manifest is written, the
    whole checkpoint is verified, and it is renamed to ``dst``. On an error nothing is left."""
    start = time.perf_counter()
    with _staging(dst) as tmp, _progress(total, "compress", progress) as bar:
        builder = CheckpointBuilder(tmp, report, bar, steps)
        yield builder
        builder._finish()
    report.seconds = time.perf_counter() - start


def compress_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    steps: int | None = None,
    progress: bool = False,
) -> CheckpointReport:
    """Compress a ``.safetensors`` file or a model directory into the new directory ``dst``.

    ``steps`` sets every blob's tile (docs/FORMAT.md §1.4); the default suits each dtype."""
    src, dst = Path(src), Path(dst)
    root, files = _source_files(src)
    report = CheckpointReport(src, dst)
    total = sum(f.stat().st_size for f in files if f.suffix == ".safetensors")
    for f in files:  # refuse a bad input before anything is written
        if f.suffix == ".safetensors":
            read_header(f)
    with build_checkpoint(dst, report, total=total, steps=steps, progress=progress) as builder:
        for f in files:
            builder.add(f, f.relative_to(root).as_posix())
    return report


def _with_quantization_config(original: bytes, path: Path) -> bytes:
    try:
        config = json.loads(original)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not valid JSON ({exc.args[0]})") from None
    if not isinstance(config, dict):
        raise FormatError(f"{path}: not a JSON object")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?")
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
    try:
        encoded = json.loads(meta[spec.META_ENCODED])
        original_raw = zlib.decompress(base64.b64decode(meta[spec.META_ORIGINAL_HEADER], validate=True))
    except (KeyError, ValueError, zlib.error) as exc:
        raise FormatError(f"{path}: bad floatzip metadata ({exc})") from None
    if not isinstance(encoded, list) or not all(isinstance(n, str) for n in encoded):
        raise FormatError(f"{path}: bad floatzip metadata (encoded names)")
    original = parse_header(original_raw, f"{path} (original header)")
    ours, theirs = header.by_name(), original.by_name()
    if ours.keys() != theirs.keys():
        raise FormatError(f"{path}: its tensors differ from the original header's")
    for name, e in ours.items():
        o = theirs[name]
        if name in encoded:
            if e.dtype != "U8" or len(e.shape) != 1 or o.dtype not in spec.LAYOUT_BY_NAME:
                raise FormatError(f"{path}: tensor {name!r} is listed as encoded but is not a blob")
        elif (e.dtype, e.shape) != (o.dtype, o.shape):
            raise FormatError(f"{path}: tensor {name!r} differs from the original header")
    return CompressedFile(path, header, original, frozenset(encoded))


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
        for name in cf.encoded:
            out[name] = read_blob(cf, f, name)
    plain = [n for n in cf.header.by_name() if n not in cf.encoded]
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
    with cf.path.open("rb") as f:
        for o in cf.original.entries:
            if o.name in cf.encoded:
                ct = read_blob(cf, f, o.name)
                words = np.empty(ct.numel, dtype=np.dtype(f"<u{ct.layout.nbytes}"))
                try:
                    decode_words(ct, words, verify=check_crc)
                except IntegrityError as exc:
                    raise IntegrityError(f"{cf.path}: tensor {o.name!r} {exc}") from None
                yield memoryview(words.view(np.uint8).data)
            else:
                e = ours[o.name]
                yield read_range(f, cf.header.data_start + e.begin, e.nbytes, str(cf.path))


# ---------------------------------------------------------------------------------------------
# decompress and verify


def _load_manifest(root: Path) -> list[dict[str, object]]:
    path = root / spec.MANIFEST_NAME
    if not root.is_dir():
        if root.is_file():
            raise InputError(f"{root}: a compressed checkpoint is a directory (holding {spec.MANIFEST_NAME})")
        raise InputError(f"{root}: no such directory")
    if not path.is_file():
        raise FormatError(f"{root}: not a floatzip checkpoint (no {spec.MANIFEST_NAME})")
    try:
        doc = json.loads(path.read_bytes())
        version = doc["format_version"]
        files = doc["files"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{path}: bad manifest ({exc})") from None
    if version not in spec.READ_VERSIONS:
        raise VersionError(
            f"{path}: floatzip format version {version} is not supported by this floatzip "
            f"(it reads versions {', '.join(map(str, spec.READ_VERSIONS))}); upgrade floatzip"
        )
    for entry in files:
        rel = entry.get("path") if isinstance(entry, dict) else None
        if (
            not isinstance(rel, str)
            or entry.get("kind") not in ("safetensors", "copy", "modified")
            or Path(rel).is_absolute()
            or ".." in Path(rel).parts
        ):
            raise FormatError(f"{path}: bad manifest entry {entry!r}")
    return list(files)


def _restore(root: Path, entry: dict[str, object], bar: tqdm) -> Iterator[bytes | bytearray | memoryview]:
    """The original bytes of one manifest entry, piece by piece."""
    rel = str(entry["path"])
    stored = root / rel
    if entry["kind"] == "modified":
        try:
            yield base64.b64decode(str(entry["original_b64"]), validate=True)
        except (KeyError, ValueError):
            raise FormatError(f"{root / spec.MANIFEST_NAME}: bad stored original of {rel}") from None
        return
    if not stored.is_file():
        raise FormatError(f"{stored}: missing from the checkpoint")
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
    total = sum(int(str(e.get("size", 0))) for e in files if e["kind"] == "safetensors")
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
    "compress_checkpoint",
    "decompress_checkpoint",
    "is_floatzip_checkpoint",
    "open_compressed",
    "read_blob",
    "read_compressed_file",
    "verify_checkpoint",
]
