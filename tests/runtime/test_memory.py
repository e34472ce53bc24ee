"""Loading within budget on the CPU: the peak resident memory of ``from_pretrained`` plus a first forward stays
within the compressed weights + the largest unit's decode buffer + the plain tensors, plus 5%; no second copy
of the compressed weights is made (each blob is decoded from the loaded tensor itself). With
``cpu_strategy="once"`` the peak is the compressed and the decoded weights together, and once loaded only the
decoded ones stay: the compressed bytes are not kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import make_fixture

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc (Linux)")

# each run: warm up on a tiny checkpoint (imports, allocator, lazily loaded libraries), then measure the peak
# RSS over the load and one forward of the model under test, from the RSS just before it
PROBE = """
import gc, json, sys, torch, transformers, floatzip
def status():
    d = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            d[key] = int(value.split()[0]) * 1024
    return d
warm, path, strategy = sys.argv[1], sys.argv[2], sys.argv[3]
from floatzip.runtime.quantizer import FloatzipConfig
kwargs = {"quantization_config": FloatzipConfig(cpu_strategy=strategy)} if strategy != "plain" else {}
ids = torch.tensor([[1, 2, 3, 4]])
w = transformers.AutoModelForCausalLM.from_pretrained(warm, dtype=torch.bfloat16, device_map="cpu", **kwargs)
with torch.no_grad():
    w(ids)
del w
gc.collect()
before = status()
m = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cpu", **kwargs)
with torch.no_grad():
    m(ids)
gc.collect()
after = status()
rep = floatzip.memory_report(m) if getattr(m, "_floatzip_runtime", None) is not None else None
print(json.dumps({"peak": after["VmHWM"] - before["VmRSS"], "now": after["VmRSS"] - before["VmRSS"],
                  "strategy": None if rep is None else rep.strategy,
                  "budget": None if rep is None else rep.compressed_bytes + rep.largest_unit_bytes + rep.plain_bytes,
                  "resident": None if rep is None else rep.resident_bytes,
                  "bf16": sum(p.numel() * p.element_size() for p in m.parameters()) if rep is None else None}))
"""


def _measure(warm: Path, path: Path, strategy: str) -> dict[str, int | str | None]:
    run = subprocess.run([sys.executable, "-c", PROBE, str(warm), str(path), strategy], capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=12,
                         num_key_value_heads=4, vocab_size=16000)  # fmt: skip
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


def test_loading_stays_within_the_compressed_size_and_one_buffer(
    tiny_models: dict[str, object], tmp_path: Path
) -> None:
    fx = make_fixture(tmp_path, "llama-65m", _llama)  # 134 MB in BF16
    warm = tiny_models["llama"].compressed  # type: ignore[attr-defined]
    got = _measure(warm, fx.compressed, "per_unit")
    plain = _measure(warm, fx.original, "plain")
    assert got["strategy"] == "per_unit" and got["budget"] is not None and plain["bf16"] is not None
    budget = int(got["budget"])
    # the whole compressed model once (each blob decoded from the loaded tensor, not a copy of it) and one buffer
    assert int(got["peak"]) <= 1.05 * budget + (2 << 20), (got, plain)  # type: ignore[arg-type]
    assert budget < 0.9 * int(plain["bf16"])
    once = _measure(warm, fx.compressed, "once")
    assert once["strategy"] == "once" and once["resident"] is not None
    decoded = int(once["resident"])  # every weight plain, as the BF16 model's (and its few buffers)
    assert int(plain["bf16"]) <= decoded <= int(plain["bf16"]) + (64 << 10)
    print({"per_unit": got, "once": once, "plain": plain})
    # at the peak: the compressed weights (as loaded) and the decoded ones; once loaded, only the decoded ones
    assert int(once["peak"]) <= 1.05 * (budget + decoded) + (2 << 20), (once, got)  # type: ignore[arg-type]
    assert int(once["now"]) <= 1.05 * decoded + (2 << 20), (once, got)  # type: ignore[arg-type]
