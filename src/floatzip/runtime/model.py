"""Compress an in-memory model into a floatzip checkpoint, and load a plain ``nn.Module`` back from one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from floatzip.decode import decompress_tensor
from floatzip.errors import FormatError, InputError
from floatzip.format import spec
from floatzip.format.blob import CompressedTensor
from floatzip.format.checkpoint import (
    CheckpointReport,
    compress_checkpoint,
    open_compressed,
    read_compressed_file,
    staging_prefix,
)
from floatzip.runtime import blocks, strategy

TIED_KEY = "floatzip.tied"
"""Metadata key (in the original file's header) of ``{alias: name}`` for parameters stored once."""

STATE_FILE = "model.safetensors"


def _is_hf_model(model: nn.Module) -> bool:
    return callable(getattr(model, "save_pretrained", None)) and getattr(model, "config", None) is not None


def _strip_floatzip_config(config_path: Path) -> None:
    """``save_pretrained`` of a model loaded from floatzip writes decoded weights and floatzip's
    ``quantization_config``; the config is dropped before compressing them again."""
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text())
    qc = config.get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method") == spec.QUANT_METHOD:
        del config["quantization_config"]
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def state_dict_for_saving(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The decoded state dict of ``model``, each storage once: ``(tensors, {alias: stored name})``."""
    state = dict(model.state_dict())
    rt = blocks.runtime_of(model)
    if rt is not None:
        state.update({k: v for k, v in rt.decoded_tensors("cpu").items() if k in state})
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
    storages: set[int] = set()
    for name in sorted(state):
        t = state[name].detach()
        if t.device.type == "meta":
            raise InputError(f"{name!r} is on the meta device: nothing to save")
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        ptr = t.untyped_storage().data_ptr()
        shares = ptr in storages or t.untyped_storage().nbytes() != t.numel() * t.element_size()
        storages.add(ptr)
        tensors[name] = t.cpu().clone() if shares or not t.is_contiguous() else t.cpu()
    return tensors, aliases


def compress_model(
    model: nn.Module,
    save_dir: str | Path,
    *,
    steps: int | None = None,
) -> CheckpointReport:
    """Compress ``model``'s weights into the new directory ``save_dir``.

    A transformers model is saved with ``save_pretrained`` (config, generation config and all) and
    compressed: ``AutoModel*.from_pretrained(save_dir)`` loads it. Any other module's state dict is
    saved as ``model.safetensors`` (each storage once) and compressed; :func:`load_model` restores it.
    A model already running from floatzip weights is saved decoded, then compressed again.
    """
    save_dir = Path(save_dir)
    beside = save_dir.parent if save_dir.parent.is_dir() else None
    # named like the checkpoint's own staging, so that the next run removes it if this one is killed
    with tempfile.TemporaryDirectory(prefix=f"{staging_prefix(save_dir)}{os.getpid()}-save-", suffix=".tmp",
                                     dir=beside) as tmp:  # fmt: skip
        src = Path(tmp) / "model"
        if _is_hf_model(model):
            model.save_pretrained(src)  # type: ignore[operator]
            _strip_floatzip_config(src / "config.json")
        else:
            src.mkdir()
            tensors, aliases = state_dict_for_saving(model)
            if not tensors:
                raise InputError("the model has no parameters or buffers to save")
            # one metadata key only: safetensors writes several in no fixed order, and the compressed
            # checkpoint keeps the original header, which must come out the same every time
            meta = {TIED_KEY: json.dumps(aliases, sort_keys=True)} if aliases else {"format": "pt"}
            save_file(tensors, src / STATE_FILE, metadata=meta)
        return compress_checkpoint(src, save_dir, steps=steps)


def read_compressed_state(
    save_dir: str | Path,
) -> tuple[dict[str, CompressedTensor | torch.Tensor], dict[str, str]]:
    """Every tensor of a compressed checkpoint directory (blobs parsed, not decoded), and its aliases."""
    root = Path(save_dir)
    files = [root] if root.is_file() else sorted(root.glob("*.safetensors"))
    if not files:
        raise InputError(f"{root}: no .safetensors file")
    state: dict[str, CompressedTensor | torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for f in files:
        cf = open_compressed(f)
        for name, t in read_compressed_file(f).items():
            if name in state:
                raise FormatError(f"{f}: tensor {name!r} is also in another file")
            state[name] = t
        raw = cf.original.metadata.get(TIED_KEY)
        if raw:
            try:
                found = json.loads(raw)
            except ValueError:
                raise FormatError(f"{f}: bad {TIED_KEY} metadata") from None
            if not isinstance(found, dict):
                raise FormatError(f"{f}: bad {TIED_KEY} metadata")
            aliases.update({str(k): str(v) for k, v in found.items()})
    for alias, name in aliases.items():
        if name not in state:
            raise FormatError(f"{root}: {alias!r} is tied to {name!r}, which the checkpoint does not hold")
    return state, aliases


def load_model(
    module: nn.Module,
    save_dir: str | Path,
    *,
    device: torch.device | str | None = None,
    keep_compressed: bool = False,
    backend: str = "auto",
    offload: bool = False,
    strict: bool = True,
    fused: bool = False,
    cpu_strategy: str = "auto",
) -> nn.Module:
    """Load a checkpoint written by :func:`compress_model` into ``module`` (which may be on ``meta``).

    By default every weight is decoded (bit for bit) and assigned. With ``keep_compressed`` the compressed
    weights go to floatzip's runtime (:func:`floatzip.runtime.blocks.install`), exactly as for transformers
    models (blocks from ``_no_split_modules``, else each module with compressed weights), with its options:
    ``backend``, ``offload``, ``fused`` (GPU blocks' Linear layers by the fused decode-GEMV, opt-in, not
    bit-identical) and ``cpu_strategy`` (on the CPU: ``"per_unit"`` decodes each block on use, ``"once"``
    decodes everything at load, ``"auto"`` picks by available memory). Without ``keep_compressed`` those
    options do not apply and must keep their defaults.
    """
    strategy.check_cpu_strategy(cpu_strategy, offload=offload)
    if not keep_compressed and (offload or fused or cpu_strategy != "auto"):
        raise InputError("offload, fused and cpu_strategy are options of keep_compressed=True (the runtime); "
                         "without it every weight is decoded at load")  # fmt: skip
    state, aliases = read_compressed_state(save_dir)
    names = {**{n: n for n in state}, **aliases}
    expected = dict(module.state_dict(keep_vars=True))
    if strict:
        missing = sorted(set(expected) - set(names))
        unexpected = sorted(set(names) - set(expected))
        if missing or unexpected:
            raise InputError(f"{save_dir}: the checkpoint does not match the module (missing: {missing[:5]}, "
                             f"unexpected: {unexpected[:5]})")  # fmt: skip
    compressed: dict[str, CompressedTensor] = {}
    plain: dict[str, torch.Tensor] = {}
    decoded: dict[int, torch.Tensor] = {}
    for name, stored in names.items():
        value = state[stored]
        if name not in expected:
            continue
        want = expected[name]
        if isinstance(value, CompressedTensor):
            if tuple(want.shape) != value.shape:
                raise FormatError(f"{save_dir}: {name!r} holds shape {list(value.shape)}, the module needs "
                                  f"{list(want.shape)}")  # fmt: skip
            if keep_compressed and isinstance(want, nn.Parameter):
                compressed[name] = value
                continue
            if id(value) not in decoded:
                decoded[id(value)] = decompress_tensor(value, device=device)
            plain[name] = decoded[id(value)]
        else:
            plain[name] = value if device is None else value.to(device)
    result = module.load_state_dict(plain, strict=False, assign=True)
    if strict and (set(result.missing_keys) - set(compressed) or result.unexpected_keys):
        raise InputError(f"{save_dir}: could not load {result.missing_keys[:5]} {result.unexpected_keys[:5]}")
    _retie(module, names, plain)
    if compressed:
        blocks.install(module, compressed, device=device, backend=backend, offload=offload, fused=fused,
                       cpu_strategy=cpu_strategy)  # fmt: skip
    elif device is not None:
        module.to(device)
    return module


def _retie(module: nn.Module, names: Mapping[str, str], plain: Mapping[str, torch.Tensor]) -> None:
    """Make aliases of one stored tensor the same Parameter object again (load_state_dict wraps each)."""
    params = dict(module.named_parameters(remove_duplicate=False))
    for alias, stored in names.items():
        if alias != stored and alias in params and stored in params and alias in plain:
            mod_path, _, attr = alias.rpartition(".")
            owner = module.get_submodule(mod_path) if mod_path else module
            owner._parameters[attr] = params[stored]


__all__ = ["compress_model", "load_model", "read_compressed_state", "state_dict_for_saving"]
