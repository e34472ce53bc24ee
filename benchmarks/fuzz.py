"""Fuzz floatzip's readers: mutated blobs and checkpoints, decoders' inputs and outputs against no-access pages.

    python benchmarks/fuzz.py [--cases 100000] [--seconds 900] [--workers 2] [--seed 0] [--json FILE]

Each case takes one sound input, mutates it (bit flips, bytes set to edge values, header fields
overwritten with edge integers, truncation, extension, splices from another input) and, for blobs, usually
recomputes the blob checksum so that the mutation reaches the parser's structure checks and the decoders
behind them. Case kinds, in turn:

* ``v2``: a format v2 blob (BF16, F16, F32, F8 E4M3 / E5M2; 1 to 20 000 elements), or a version 3 one (F32
  with one or two coded low byte planes), parsed, then decoded by the compiled core (whole tensor, checked
  against its data CRC) and tile range by tile range;
* ``packed``: a version 2 blob in its packed form (docs/FORMAT.md §2.3), mutated, rebuilt and parsed,
  then decoded as a ``v2`` case;
* ``kernel``: the same, laid out as a GPU decode batch and decoded by the CUDA kernel's own per-lane code
  on the CPU (floatzip.decode.cuda.emulate), as the runtime's GPU path does;
* ``v1``: a format v1 blob of the golden file, parsed and decoded;
* ``checkpoint``: one file of a small compressed checkpoint (a safetensors header or data byte, the
  manifest, config.json) mutated, then opened, checked, read, restored and verified; its small tensors are
  coded in group records (docs/FORMAT.md §2.4), its blobs packed.

The blob and every array the compiled code reads, and every output it writes, are placed with their last
byte against a page mapped with no access (every other case: their first byte after one), so a read or
write one byte out of bounds is a crash, not a silent success. Each case must end in floatzip's own error
or in a success whose output is the original's bytes (for the kernel, whose CRC check is the runtime's job,
in the kernel's own error flags or any output). Anything else is an *escape* (an exception of another type,
with the case number to replay it); a worker that dies is a *crash*; a case over 10 s is a *hang*.

Workers run cases ``seed, seed + workers, ...``; a dead or hung worker is restarted after the case it was on.
Exit status 1 if anything escaped, crashed or hung.
"""

from __future__ import annotations

import argparse
import base64
import copy
import ctypes
import dataclasses
import datetime
import json
import mmap
import multiprocessing as mp
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

PAGE = mmap.PAGESIZE
HANG_S = 10.0
KINDS = ("v2", "v2", "packed", "kernel", "v1", "checkpoint")  # a v2 blob twice as often as each other kind
GOLDEN_V1 = Path(__file__).resolve().parents[1] / "tests" / "golden" / "v1" / "blobs" / "blobs.safetensors"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class Guarded:
    """``n`` bytes in a private mapping between two no-access pages: flush against the one after (``tail``)
    or the one before. ``align`` rounds the start down (tail) so that the core reads the bytes in place."""

    def __init__(self, n: int, *, tail: bool, align: int = 1) -> None:
        body = max(1, -(-(n + align) // PAGE)) * PAGE
        self._map = mmap.mmap(-1, body + 2 * PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        whole = np.frombuffer(self._map, dtype=np.uint8)
        base = whole.ctypes.data
        for at in (base, base + PAGE + body):
            if _libc.mprotect(ctypes.c_void_p(at), PAGE, 0) != 0:
                raise OSError(ctypes.get_errno(), "mprotect")
        if tail:
            start = PAGE + body - n
            start -= start % align
        else:
            start = PAGE
        self.array = whole[start : start + n]


def guarded_copy(a: np.ndarray, *, tail: bool, align: int = 16) -> np.ndarray:
    g = Guarded(a.nbytes, tail=tail, align=align)
    out = g.array.view(a.dtype) if a.nbytes % a.itemsize == 0 and a.nbytes else g.array
    out[...] = a.reshape(-1).view(out.dtype) if a.nbytes else out
    _keep.append(g)
    return out


_keep: list[Guarded] = []  # the mappings of the case being run (freed when the case ends)


def guarded_empty(nbytes: int, dtype: np.dtype, *, tail: bool) -> np.ndarray:
    g = Guarded(nbytes, tail=tail, align=max(16, dtype.itemsize))
    _keep.append(g)
    return g.array.view(dtype) if nbytes else g.array.view(dtype)[:0]


# ---------------------------------------------------------------------------------------------------------
# inputs and mutations

EDGE32 = (0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 255, 256, 4095, 4096, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def sound_blobs(rng: np.random.Generator) -> list[tuple[bytes, bytes]]:
    """(blob, original bytes) of a spread of tensors: dtypes, sizes, steps, trained-like and odd values."""
    import torch

    from floatzip.codec.encode import compress_tensor

    out = []
    dtypes = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2]
    g = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    for i in range(24):
        dtype = dtypes[i % len(dtypes)]
        n = int(rng.choice([1, 3, 31, 32, 33, 100, 511, 4096, 5000, 20_000]))
        scale = float(rng.choice([0.02, 1.0, 300.0]))
        t = (torch.randn(n, generator=g) * scale).clamp(-400, 400).to(dtype)
        if i % 6 == 5:  # bands of far-apart scales: the encoder gives tiles their own tables (n_tables > 1)
            n = 20_000
            band = torch.tensor([1e-3, 1.0, 0.03, 20.0])[(torch.arange(n) // 2500) % 4]
            t = (torch.randn(n, generator=g) * band).to(dtype)
        if i % 7 == 3:  # a few specials
            t.view(torch.uint8)[: min(n, 8)] = 0xFF
        steps = int(rng.choice([8, 16, 64, 256]))
        ct = compress_tensor(t, steps=steps)
        out.append((ct.to_bytes(), t.view(torch.uint8).numpy().tobytes()))
    # version 3: F32 whose low 16 bits take few values (a cast from BF16 plus a skewed low byte), 1 or 2 planes
    for i in range(6):
        n = int(rng.choice([1, 33, 511, 5000, 20_000]))
        t = (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16).float()
        low = torch.clamp(torch.empty(n).geometric_(0.3, generator=g), max=255).to(torch.int32)
        t = (t.view(torch.int32) | low << (8 * (i % 2))).view(torch.float32)
        ct = compress_tensor(t, steps=int(rng.choice([8, 16, 64])), planes=1 + i % 2)
        out.append((ct.to_bytes(), t.view(torch.uint8).numpy().tobytes()))
    return out


def reseal(b: bytearray) -> None:
    """Recompute a blob's own checksum (v2: CRC-32C at bytes 52..56; v1: CRC-32 at 44..48), as a forger would."""
    import zlib

    from floatzip import _core

    if b[:4] == b"FZpk":  # packed: the rebuilt blob's checksum, kept in the packed header
        from floatzip.errors import FormatError
        from floatzip.format import packed

        try:
            rebuilt = bytearray(packed.unpack(bytes(b)))
        except FormatError:
            return
        reseal(rebuilt)
        b[20:24] = rebuilt[52:56]
    elif len(b) >= 56 and b[4:6] == b"\x02\x00":
        b[52:56] = b"\0\0\0\0"
        b[52:56] = struct.pack("<I", _core.crc32c(bytes(b)))
    elif len(b) >= 48 and b[4:6] == b"\x01\x00":
        b[44:48] = b"\0\0\0\0"
        b[44:48] = struct.pack("<I", zlib.crc32(bytes(b)) & 0xFFFFFFFF)


EDGE_VALUES: tuple[object, ...] = (0, 1, -1, 2**31, 2**32, 2**63, 2**64, 10**30, 0.5, "", "U8", "BF16", "F64",
                                   "x" * 300, None, True, [], [0], [2**62, 0], {}, "../x", "a\x00b")  # fmt: skip


def mutate_json(doc: object, rng: np.random.Generator) -> object:
    """``doc`` with one value somewhere in it replaced by an edge value (or a key deleted, or one added)."""
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            paths.append((node, k))
            walk(v)

    walk(doc)
    if not paths:
        return copy.deepcopy(EDGE_VALUES[int(rng.integers(len(EDGE_VALUES)))])
    node, key = paths[int(rng.integers(len(paths)))]
    r = rng.random()
    if r < 0.15 and isinstance(node, dict):
        del node[key]
    elif r < 0.25 and isinstance(node, dict):
        node[f"{key}_"] = node[key]
    elif isinstance(node[key], int) and not isinstance(node[key], bool) and r < 0.6:
        node[key] = node[key] + int(rng.choice([-16, -8, -1, 1, 2, 8, 4096]))
    else:
        node[key] = copy.deepcopy(EDGE_VALUES[int(rng.integers(len(EDGE_VALUES)))])
    return doc


def mutate_file(name: str, data: bytes, rng: np.random.Generator, others: list[bytes]) -> bytes:
    """A checkpoint file mutated: as bytes, or half the time as the JSON it holds (a safetensors header,
    its floatzip metadata, the manifest, config.json), re-serialised."""
    if rng.random() < 0.5:
        if name.endswith(".safetensors"):
            n = struct.unpack_from("<Q", data)[0]
            header = json.loads(data[8 : 8 + n])
            meta = header.get("__metadata__", {})
            # the floatzip records inside the metadata: JSON (v2's lists and maps, v3's header recipe) mutated as
            # JSON, base64 (v3's blob bitmap and checksums, a stored original header) as the bytes they hold
            nested = [k for k in meta if k in ("floatzip.encoded", "floatzip.crc32c", "floatzip.header")]
            packed = [k for k in meta if k in ("floatzip.blobs", "floatzip.crcs", "floatzip.original_header")]
            r = rng.random()
            if nested and r < 0.3:
                k = nested[int(rng.integers(len(nested)))]
                meta[k] = json.dumps(mutate_json(json.loads(meta[k]), rng))
            elif packed and r < 0.5:
                k = packed[int(rng.integers(len(packed)))]
                inner = mutate(base64.b64decode(meta[k]), rng, others, header=16)
                meta[k] = base64.b64encode(bytes(inner)).decode()
            else:
                header = mutate_json(header, rng)
            raw = json.dumps(header).encode()
            return struct.pack("<Q", len(raw)) + raw + data[8 + n :]
        return json.dumps(mutate_json(json.loads(data), rng)).encode()
    header = struct.unpack_from("<Q", data)[0] + 8 if name.endswith(".safetensors") else len(data)
    return bytes(mutate(data, rng, others, header=header if rng.random() < 0.5 else len(data)))


def mutate(data: bytes, rng: np.random.Generator, others: list[bytes], header: int = 64) -> bytearray:
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(7))
        if not b:
            b += rng.bytes(int(rng.integers(1, 64)))
        elif op == 0:  # bit flips anywhere
            for _ in range(int(rng.integers(1, 9))):
                i = int(rng.integers(len(b)))
                b[i] ^= 1 << int(rng.integers(8))
        elif op == 1:  # bytes set to edge values
            for _ in range(int(rng.integers(1, 5))):
                b[int(rng.integers(len(b)))] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFE, 0xFF]))
        elif op in (2, 3):  # a header field (or any word) overwritten with an edge integer
            span = min(len(b), header if op == 2 else len(b))
            if span >= 4:
                i = int(rng.integers(0, span - 3)) & ~3
                b[i : i + 4] = struct.pack("<I", int(rng.choice(EDGE32)))
        elif op == 4:  # truncation
            del b[int(rng.integers(0, len(b))) :]
        elif op == 5:  # extension
            b += rng.bytes(int(rng.integers(1, 256)))
        else:  # a splice from another input
            o = others[int(rng.integers(len(others)))]
            if o:
                n = int(rng.integers(1, min(len(o), 512) + 1))
                src, dst = int(rng.integers(0, len(o) - n + 1)), int(rng.integers(0, len(b)))
                b[dst : dst + n] = o[src : src + n]
    return b


# ---------------------------------------------------------------------------------------------------------
# the cases


class Silent(Exception):
    """A case that succeeded with the wrong output (silent corruption)."""


def case_v2(blob: bytearray, original: bytes, tail: bool, rng: np.random.Generator) -> str:
    from floatzip.decode import decode_words
    from floatzip.decode.cpu import decode_tiles
    from floatzip.format.blob import CompressedTensor

    placed = guarded_copy(np.frombuffer(bytes(blob), dtype=np.uint8), tail=tail, align=4)
    ct = CompressedTensor.from_bytes(placed)
    ct = dataclasses.replace(ct, _blob=memoryview(placed.data))  # decode from the guarded bytes, not a copy
    item = ct.layout.nbytes
    out = guarded_empty(ct.numel * item, np.dtype(f"<u{item}"), tail=tail)
    decode_words(ct, out)
    if out.view(np.uint8).tobytes() != original:
        raise Silent("a v2/v3 blob decoded, checksum and all, to bytes other than the original")
    if ct.tiled and ct.numel:
        n_tiles = int(ct.v2["n_tiles"])
        first = int(rng.integers(0, n_tiles + 1))
        count = int(rng.integers(0, n_tiles - first + 1))
        elems = sum(_tile_elements(ct, t) for t in range(first, first + count))
        part = guarded_empty(elems * item, np.dtype(f"<u{item}"), tail=not tail)
        decode_tiles(ct, first, count, part)
    return "decoded"


def case_packed(blob: bytearray, original: bytes, tail: bool, rng: np.random.Generator) -> str:
    from floatzip.format.blob import CompressedTensor

    rebuilt = CompressedTensor.from_bytes(bytes(blob), "packed").to_bytes()  # unpacked, then parsed whole
    return case_v2(bytearray(rebuilt), original, tail, rng)


def _tile_elements(ct: Any, t: int) -> int:
    from floatzip.format.spec import LANES

    tile = LANES * int(ct.v2["steps"]) * ct.layout.group
    return max(0, min(tile, ct.numel - t * tile))


def case_kernel(blob: bytearray, original: bytes, tail: bool, rng: np.random.Generator) -> str:
    from floatzip.decode import cuda
    from floatzip.format.blob import CompressedTensor

    ct = CompressedTensor.from_bytes(bytes(blob))
    hb = cuda.host_batch([ct], out_align=16)  # validates every index the kernel reads by
    arrays = {k: guarded_copy(v, tail=tail) if v.nbytes else v for k, v in hb.arrays.items()}
    hb = dataclasses.replace(hb, arrays=arrays)
    out = guarded_empty(hb.nbytes, np.dtype(np.uint8), tail=not tail)
    errors = cuda.emulate(hb, out)
    if errors.any():
        return "flagged"
    return "decoded" if out[: len(original)].tobytes() == original else "decoded-other"


def case_v1(blob: bytearray, original: bytes, tail: bool, rng: np.random.Generator) -> str:
    from floatzip.decode import decode_words
    from floatzip.format.blob import CompressedTensor

    ct = CompressedTensor.from_bytes(bytes(blob))
    s = ct.v1  # its streams, moved against no-access pages
    placed = {
        k: guarded_copy(getattr(s, k), tail=tail) for k in ("code_lengths", "tile_words", "lane_bits", "codes", "raw")
    }
    ct = dataclasses.replace(ct, _v1=dataclasses.replace(s, **placed))
    item = ct.layout.nbytes
    out = guarded_empty(ct.numel * item, np.dtype(f"<u{item}"), tail=not tail)
    decode_words(ct, out)
    if out.view(np.uint8).tobytes() != original:
        raise Silent("a v1 blob decoded, checksum and all, to bytes other than the original")
    return "decoded"


class CheckpointCases:
    """One small compressed checkpoint (a few encoded tensors, some plain ones), mutated a file at a time."""

    FILES = ("model.safetensors", "model.safetensors", "model.safetensors", "floatzip.json", "config.json")

    def __init__(self, root: Path) -> None:
        import torch
        from safetensors.torch import save_file

        from floatzip.format.checkpoint import compress_checkpoint

        src = root / "src"
        src.mkdir()
        g = torch.Generator().manual_seed(0)
        tensors = {
            "a.weight": (torch.randn(64, 96, generator=g) * 0.02).to(torch.bfloat16),
            "b.weight": (torch.randn(4096, generator=g) * 0.05).to(torch.float16),
            "c.weight": torch.randn(70, 64, generator=g).to(torch.float32),
            "norm.weight": torch.ones(64, dtype=torch.bfloat16),
            "a.bias": (torch.randn(96, generator=g) * 0.02).to(torch.bfloat16),
            "b.bias": (torch.randn(200, generator=g) * 0.02).to(torch.float16),
            "c.bias": (torch.randn(300, generator=g) * 0.02).to(torch.float16),
            "ids": torch.arange(10, dtype=torch.int64),
        }
        save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
        (src / "config.json").write_text(json.dumps({"model_type": "fuzz", "hidden_size": 64}))
        self.sound = root / "sound"
        compress_checkpoint(src, self.sound)
        self.originals = {p.name: p.read_bytes() for p in src.iterdir()}
        self.files = {name: (self.sound / name).read_bytes() for name in set(self.FILES)}
        self.work = root / "work"

    def run(self, rng: np.random.Generator) -> str:
        from floatzip.format.checkpoint import (
            check_stored_tensors,
            decompress_checkpoint,
            open_compressed,
            read_compressed_file,
            verify_checkpoint,
        )

        name = self.FILES[int(rng.integers(len(self.FILES)))]
        b = mutate_file(name, self.files[name], rng, list(self.files.values()))
        if self.work.exists():
            shutil.rmtree(self.work)
        shutil.copytree(self.sound, self.work)
        (self.work / name).write_bytes(bytes(b))
        path = self.work / "model.safetensors"
        cf = open_compressed(path)
        with path.open("rb") as f:
            check_stored_tensors(cf, f)
        read_compressed_file(path)
        verify_checkpoint(self.work)
        dst = self.work.parent / "restored"
        if dst.exists():
            shutil.rmtree(dst)
        decompress_checkpoint(self.work, dst)
        restored = {p.name: p.read_bytes() for p in dst.iterdir()}
        if restored != self.originals:
            raise Silent("a mutated checkpoint restored, sha256 checks and all, to other files")
        return "restored"


# ---------------------------------------------------------------------------------------------------------
# the workers


def worker(wid: int, args: argparse.Namespace, start: int, current: Any, results: Any) -> None:
    from floatzip.errors import FloatzipError

    os.environ.setdefault("FLOATZIP_NUM_THREADS", "1")  # before the core starts its pool
    rng0 = np.random.default_rng([args.seed, 0])
    blobs = sound_blobs(rng0)
    v1 = _v1_blobs()
    from floatzip.format.blob import CompressedTensor

    parsed = [(CompressedTensor.from_bytes(b), o) for b, o in blobs]
    packed_blobs = [(ct.packed_bytes(), o) for ct, o in parsed if ct.version == 2]  # version 3 is never packed
    every = [b for b, _ in blobs] + [b for b, _ in v1] + [b for b, _ in packed_blobs]
    tmp = Path(tempfile.mkdtemp(prefix=f"floatzip-fuzz-{wid}-"))
    try:
        ckpt = CheckpointCases(tmp)
        counts: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        i = start
        deadline = time.monotonic() + args.seconds
        while i < args.cases and time.monotonic() < deadline:
            current.value = i
            rng = np.random.default_rng([args.seed, 1, i])
            kind = KINDS[i % len(KINDS)]
            tail = bool(i & 1)
            try:
                if kind == "checkpoint":
                    outcome = ckpt.run(rng)
                else:
                    pool = {"v1": v1, "packed": packed_blobs}.get(kind, blobs)
                    blob, original = pool[int(rng.integers(len(pool)))]
                    b = mutate(blob, rng, every)
                    if rng.random() < 0.85:
                        reseal(b)
                    run = {"v2": case_v2, "packed": case_packed, "kernel": case_kernel, "v1": case_v1}[kind]
                    outcome = run(b, original, tail, rng)
            except FloatzipError as exc:
                outcome = "refused"
                reasons[f"{kind}: {type(exc).__name__}: {_reason(str(exc))}"] += 1
            except Silent as exc:
                outcome = "silent"
                results.put(("escape", wid, i, kind, f"silent corruption: {exc}"))
            except Exception as exc:  # an escape: anything but floatzip's own errors
                outcome = "escape"
                tb = traceback.format_exc(limit=4)
                results.put(("escape", wid, i, kind, f"{type(exc).__name__}: {exc}\n{tb}"))
            finally:
                _keep.clear()
            counts[f"{kind}:{outcome}"] += 1
            i += args.workers
            if sum(counts.values()) % 500 == 0:
                results.put(("counts", wid, i, "", dict(counts)))
                counts.clear()
        results.put(("counts", wid, i, "", dict(counts)))
        results.put(("reasons", wid, i, "", dict(reasons)))
        results.put(("done", wid, i, "", ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _reason(message: str) -> str:
    """A refusal's message without paths, names and numbers, so that alike ones count together."""
    message = re.sub(r"(/[^\s:]+)+", "PATH", message)
    message = re.sub(r"'[^']*'", "'…'", message)
    return re.sub(r"\d+", "N", message)[:90]


def _v1_blobs() -> list[tuple[bytes, bytes]]:
    from safetensors import safe_open

    from floatzip.decode import decompress_tensor
    from floatzip.format.blob import CompressedTensor

    out = []
    with safe_open(str(GOLDEN_V1), "np") as f:
        for k in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            blob = f.get_tensor(k).tobytes()
            t = decompress_tensor(CompressedTensor.from_bytes(blob))
            import torch

            out.append((blob, t.view(-1).view(torch.uint8).numpy().tobytes()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=900.0, help="time box of the whole run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    t0 = time.monotonic()
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    escapes: list[dict[str, Any]] = []
    crashes: list[dict[str, Any]] = []
    hangs: list[dict[str, Any]] = []
    procs: dict[int, tuple[Any, Any, float, int]] = {}  # wid -> (process, current case, last change, case)

    def spawn(wid: int, start: int) -> None:
        current = ctx.Value("q", -1)
        remaining = max(1.0, args.seconds - (time.monotonic() - t0))
        p = ctx.Process(target=worker, args=(wid, _with_seconds(args, remaining), start, current, results))
        p.start()
        procs[wid] = (p, current, time.monotonic(), -1)

    for w in range(args.workers):
        spawn(w, w)
    done: set[int] = set()
    while len(done) < args.workers:
        while not results.empty():
            what, wid, i, kind, payload = results.get()
            if what == "counts":
                totals.update(payload)
            elif what == "reasons":
                reasons.update(payload)
            elif what == "escape":
                escapes.append({"case": i, "kind": kind, "error": payload})
                print(f"escape in case {i} ({kind}): {payload.splitlines()[0]}", file=sys.stderr)
            elif what == "done":
                done.add(wid)
        for wid, (p, current, since, seen) in list(procs.items()):
            if wid in done:
                continue
            case = int(current.value)
            if case != seen:
                procs[wid] = (p, current, time.monotonic(), case)
            elif p.is_alive() and case >= 0 and time.monotonic() - since > HANG_S:
                hangs.append({"case": case, "worker": wid})
                print(f"hang in case {case}: restarting worker {wid}", file=sys.stderr)
                p.kill()
                p.join()
                spawn(wid, case + args.workers)
                continue
            if not p.is_alive() and wid not in done:
                time.sleep(0.2)
                while not results.empty():
                    what, w2, i, kind, payload = results.get()
                    if what == "counts":
                        totals.update(payload)
                    elif what == "escape":
                        escapes.append({"case": i, "kind": kind, "error": payload})
                    elif what == "done":
                        done.add(w2)
                if wid not in done and case < 0:
                    raise SystemExit(f"worker {wid} died while setting up (exit {p.exitcode}): see above")
                if wid not in done:
                    crashes.append({"case": case, "worker": wid, "exitcode": p.exitcode})
                    print(f"crash in case {case} (exit {p.exitcode}): restarting worker {wid}", file=sys.stderr)
                    spawn(wid, case + args.workers)
        time.sleep(0.05)
    wall = time.monotonic() - t0
    n = sum(totals.values())
    by_kind: dict[str, dict[str, int]] = {}
    for key, v in sorted(totals.items()):
        kind, outcome = key.split(":")
        by_kind.setdefault(kind, {})[outcome] = v
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cases": n,
        "seconds": round(wall, 1),
        "workers": args.workers,
        "seed": args.seed,
        "outcomes": by_kind,
        "refusals": dict(reasons.most_common()),
        "escapes": escapes,
        "crashes": crashes,
        "hangs": hangs,
    }
    print(f"{n} cases in {wall:.0f} s on {args.workers} workers (seed {args.seed})")
    for kind, outcomes in by_kind.items():
        print(f"  {kind:11s} " + ", ".join(f"{k} {v}" for k, v in outcomes.items()))
    print(f"  escapes {len(escapes)}, crashes {len(crashes)}, hangs over {HANG_S:.0f} s {len(hangs)}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 1 if escapes or crashes or hangs else 0


def _with_seconds(args: argparse.Namespace, seconds: float) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "seconds": seconds})


if __name__ == "__main__":
    sys.exit(main())
