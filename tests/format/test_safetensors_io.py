"""The safetensors header reader treats files as untrusted; the streaming writer makes valid files."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from floatzip.errors import FormatError
from floatzip.format.safetensors_io import StreamingWriter, parse_header, read_header


def header(doc: dict[str, object]) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {
                "a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
                "b": {"dtype": "F16", "shape": [2], "data_offsets": [2, 6]},
            },
            "overlaps another or leaves a hole",
        ),
        ({"a": {"dtype": "F16", "shape": [2], "data_offsets": [4, 8]}}, "leaves a hole"),
        ({"a": {"dtype": "F16", "shape": [3], "data_offsets": [0, 4]}}, "do not match its shape"),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 4]}}, "unknown dtype"),
        ({"a": {"dtype": "F16", "shape": [-2], "data_offsets": [0, 4]}}, "bad safetensors entry"),
        ({"a": [1, 2]}, "bad safetensors entry"),
        ({"__metadata__": {"k": 1}}, "__metadata__"),
    ],
)
def test_bad_headers_are_named(doc: dict[str, object], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_header(header(doc), "f.safetensors")


def test_not_json_and_wrong_sizes(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="not valid JSON"):
        parse_header(b"\xff\xfe", "f")
    with pytest.raises(FormatError, match="the tensors cover 4 bytes"):
        parse_header(header({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}), "f", data_size=5)
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(FormatError, match="no header length"):
        read_header(p)
    p.write_bytes(b"abc")
    with pytest.raises(FormatError, match="only 3 bytes"):
        read_header(p)


def test_streaming_writer_output_loads_with_the_safetensors_library(tmp_path: Path) -> None:
    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "s": torch.tensor(7, dtype=torch.int64)}
    buf = io.BytesIO()
    writer = StreamingWriter(buf, [(n, "F32" if n == "w" else "I64", t.dim()) for n, t in tensors.items()], {"k": "v"})
    for name, t in tensors.items():
        writer.add(name, "F32" if name == "w" else "I64", tuple(t.shape), t.numpy().tobytes())
    writer.finish()
    path = tmp_path / "out.safetensors"
    path.write_bytes(buf.getvalue())
    loaded = load_file(path)
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["s"], tensors["s"])
    h = read_header(path)
    assert h.metadata == {"k": "v"} and h.data_start % 8 == 0
