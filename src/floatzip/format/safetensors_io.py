"""Reading safetensors headers as untrusted input, and writing safetensors files tensor by tensor.

The safetensors library reads tensors well but has no streaming writer and no access to a header's
exact bytes, which a byte-for-byte restore needs; this module adds just those two things.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from floatzip.errors import FormatError, InputError
from floatzip.format.spec import SAFETENSORS_ITEMSIZE

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own cap


@dataclass(frozen=True)
class Entry:
    """One tensor of a safetensors header; ``begin``/``end`` are relative to the data area."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A parsed, validated safetensors header."""

    raw: bytes  # the JSON bytes exactly as stored (padding included)
    entries: tuple[Entry, ...]  # in data order (by offset)
    metadata: dict[str, str]
    data_start: int  # absolute file offset of the data area
    data_size: int

    def by_name(self) -> dict[str, Entry]:
        return {e.name: e for e in self.entries}


def parse_header(raw: bytes, where: str, data_size: int | None = None) -> Header:
    """Validate header JSON bytes; ``data_size`` (when known) is checked against the offsets."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{where}: not a safetensors file (its header is not valid JSON: {exc.args[0]})") from None
    except RecursionError:
        raise FormatError(f"{where}: not a safetensors file (its header nests too deep)") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{where}: not a safetensors file (its header is not a JSON object)")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{where}: bad safetensors __metadata__ (it must map strings to strings)")
    entries = []
    for name, info in doc.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (
                isinstance(dtype, str)
                and isinstance(shape, list)
                and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(begin, int)
                and isinstance(end, int)
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise FormatError(f"{where}: bad safetensors entry for tensor {name!r}")
        if dtype not in SAFETENSORS_ITEMSIZE:
            raise FormatError(f"{where}: tensor {name!r} has unknown dtype {dtype!r}")
        if end - begin != math.prod(shape) * SAFETENSORS_ITEMSIZE[dtype] or begin < 0:
            raise FormatError(f"{where}: tensor {name!r}'s offsets do not match its shape and dtype")
        entries.append(Entry(name, dtype, tuple(shape), begin, end))
    entries.sort(key=lambda e: (e.begin, e.end))
    pos = 0
    for e in entries:
        if e.begin != pos:
            raise FormatError(f"{where}: tensor {e.name!r} overlaps another or leaves a hole in the data")
        pos = e.end
    if data_size is not None and pos != data_size:
        raise FormatError(f"{where}: the tensors cover {pos} bytes but the data area has {data_size} (truncated?)")
    return Header(raw, tuple(entries), dict(metadata), 0, pos)


_HOW_TO_SAFETENSORS = (
    "floatzip reads safetensors: save the model as safetensors first (transformers and diffusers: "
    "from_pretrained, then save_pretrained, which writes safetensors)"
)


def what_it_is(path: Path) -> str | None:
    """What a file that is not safetensors looks like it is, with how to get to safetensors; None if unknown."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head == b"GGUF":
        return ("a GGUF file (llama.cpp), usually quantized with losses; floatzip compresses the original "
                "safetensors weights (in BF16, FP16, FP32 or FP8) instead")  # fmt: skip
    if head[:2] == b"PK" or head[:1] == b"\x80" or path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
        # (only asked of files that are not safetensors: a header length can begin with these bytes too)
        return f"a PyTorch checkpoint (pickle); {_HOW_TO_SAFETENSORS}"
    return None


def not_safetensors_hint(files: list[Path]) -> str:
    """For a directory without safetensors: what its weights are, if they can be recognised."""
    for f in files:
        if (what := what_it_is(f)) is not None and f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".gguf"):
            return f": {f.name} is {what}"
    return ""


def read_header(path: Path) -> Header:
    """Read and validate the header of the safetensors file at ``path``."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 <= n <= MAX_HEADER_BYTES or 8 + n > size:  # not safetensors: say what it looks like
                if (what := what_it_is(path)) is not None:
                    raise FormatError(f"{path}: not a safetensors file: {what}")
                if n < 0:
                    raise FormatError(f"{path}: not a safetensors file (only {len(head)} bytes)")
                raise FormatError(f"{path}: not a safetensors file (its first 8 bytes are no header length)")
            raw = f.read(n)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror})") from None
    header = parse_header(raw, str(path), size - 8 - n)
    return Header(header.raw, header.entries, header.metadata, 8 + n, header.data_size)


def read_range(f: io.BufferedIOBase, start: int, nbytes: int, where: str) -> bytearray:
    """``nbytes`` bytes at ``start``, in a writable buffer (so NumPy and torch can wrap it without a copy)."""
    f.seek(start)
    data = bytearray(nbytes)
    if f.readinto(data) != nbytes:
        raise FormatError(f"{where}: truncated file")
    return data


class StreamingWriter:
    """Writes a safetensors file one tensor at a time, with memory bounded by the largest tensor.

    The header's room is reserved up front from the names and dtypes (every number at its widest, or at
    the bound the caller knows), tensors are appended as they come, and the header is written last, padded with spaces.
    """

    def __init__(
        self,
        f: BinaryIO,
        planned: list[tuple[str, str, int | tuple[int, ...]]],
        metadata: dict[str, str],
        where: str = "output",
        *,
        max_offset: int | None = None,
    ) -> None:
        """``planned`` lists every tensor that may be written, in any order: (name, dtype, ndim), or (name,
        dtype, widest shape) when each dimension's bound is known (the room then fits it, not 20 digits).
        ``max_offset`` bounds the data offsets likewise. A header that could outgrow what safetensors readers
        accept is refused (InputError naming ``where``) before anything is written."""
        widest = 10**19
        edge = widest if max_offset is None else max_offset

        def shape(nd: int | tuple[int, ...]) -> list[int]:
            return [widest] * max(nd, 1) if isinstance(nd, int) else list(nd)

        probe: dict[str, dict[str, object]] = {
            n: {"dtype": d, "shape": shape(nd), "data_offsets": [edge, edge]} for n, d, nd in planned
        }
        self._room = len(self._encode(probe, metadata)) + 8
        self._room += -(8 + self._room) % 8
        if self._room > MAX_HEADER_BYTES:
            raise InputError(
                f"{where}: {len(planned)} tensors need a safetensors header of up to {self._room} bytes, over the "
                f"{MAX_HEADER_BYTES} that safetensors readers accept; split it into several files"
            )
        self._f = f
        self._entries: dict[str, dict[str, object]] = {}
        self._pos = 0
        self._metadata = metadata
        f.seek(8 + self._room)

    @staticmethod
    def _encode(entries: dict[str, dict[str, object]], metadata: dict[str, str]) -> bytes:
        return json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":")).encode()

    def add(self, name: str, dtype: str, shape: tuple[int, ...], data: bytes | bytearray) -> None:
        self._f.write(data)
        n = len(data)
        self._entries[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [self._pos, self._pos + n],
        }
        self._pos += n

    def finish(self, metadata: dict[str, str] | None = None) -> None:
        """Write the header; ``metadata`` may replace the planned one if it is no longer."""
        header = self._encode(self._entries, self._metadata if metadata is None else metadata)
        if len(header) > self._room:
            raise AssertionError("safetensors header outgrew its reserved room")
        self._f.seek(0)
        self._f.write(struct.pack("<Q", self._room) + header + b" " * (self._room - len(header)))
        self._f.seek(0, os.SEEK_END)


def iter_files(root: Path) -> Iterator[Path]:
    """Files below ``root`` in a stable order, skipping hidden directories (.git, .cache). Linked
    directories are followed, each real directory once (a link to an ancestor does not loop)."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            yield Path(dirpath) / fn
