"""What loading a floatzip checkpoint through a framework's quantizer API needs, whatever the framework.

transformers (:mod:`floatzip.runtime.quantizer`) and diffusers (:mod:`floatzip.runtime.diffusers_quantizer`)
hand a quantizer the model skeleton, then the checkpoint's tensors one by one, then the loaded model. This
mixin holds what floatzip does at each step and imports neither framework:

1. :meth:`record_model`: the shape and dtype every parameter must have, and which may arrive as blobs;
2. :meth:`read_checkpoints`: every stored tensor of every file checked against its checksum before the
   framework reads any (plain ones by their bytes, blobs by their record of the original); blob sizes, for
   the memory estimates of ``device_map="auto"``;
3. :meth:`install_runtime`: every blob parsed (its own CRC checked), its dtype and shape checked against
   the parameter's, float weights that arrived decoded compressed in memory, and the block runtime
   (:mod:`floatzip.runtime.blocks`) installed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from floatzip.codec.encode import compress_tensor
from floatzip.errors import FloatzipError, FormatError, InputError, VersionError
from floatzip.format import groups, spec
from floatzip.format.blob import CompressedTensor
from floatzip.format.checkpoint import CompressedFile, check_stored_tensors, member_tensors, open_compressed
from floatzip.format.safetensors_io import read_header
from floatzip.runtime import blocks, strategy

DEFAULT_RATIO = 0.7  # bytes of a blob per original byte, when the checkpoint's headers do not tell
# the versions a model runs from: all hold v2 blobs, which the block runtime decodes (versions 3 and 4 changed
# only the container: what a file keeps to restore the original, and small blobs packed, docs/FORMAT.md §2.2,
# §2.3); version 1 checkpoints restore, not load
LOADABLE_VERSIONS = (2, 3, 4)


def checked_format_version(version: int | str) -> int:
    """The ``format_version`` of a checkpoint's quantization_config, as an int this floatzip reads."""
    v = int(version)
    if v not in LOADABLE_VERSIONS:
        raise VersionError(
            f"floatzip format version {v} is not supported by this floatzip (it loads versions "
            f"{', '.join(map(str, LOADABLE_VERSIONS))}); upgrade floatzip"
        )
    return v


LOADING_OPTIONS: dict[str, Any] = {"offload": False, "backend": "auto", "fused": False, "cpu_strategy": "auto"}
"""The loading options of a floatzip quantization config and their defaults (not stored in a checkpoint)."""


def checked_loading_options(
    *, offload: bool, backend: str, fused: bool, cpu_strategy: str, where: str = "quantization_config"
) -> dict[str, Any]:
    """The loading options as a config holds them; a bad ``cpu_strategy`` (or ``"once"`` with ``offload``), or a
    backend that is not a string, is an InputError naming ``where``."""
    if not isinstance(backend, str):
        raise InputError(f"{where}: backend must be a string such as 'auto', not {backend!r}")
    try:
        checked = strategy.check_cpu_strategy(cpu_strategy, offload=bool(offload))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    return {"offload": bool(offload), "backend": backend, "fused": bool(fused), "cpu_strategy": checked}


def options_dict(config: object) -> dict[str, Any]:
    """The loading options of ``config`` that differ from their defaults: what its ``to_dict`` adds to the
    stored keys, so that ``from_dict(to_dict())`` gives the same options back (a checkpoint's own config, which
    holds none, stays as floatzip wrote it)."""
    return {k: getattr(config, k) for k, default in LOADING_OPTIONS.items() if getattr(config, k, default) != default}


def is_blob(t: torch.Tensor) -> bool:
    return t.dtype == torch.uint8 and t.dim() == 1


class LoadingMixin:
    """State and steps of one floatzip load; call :meth:`init_loading` from the quantizer's ``__init__``."""

    expected: dict[str, tuple[tuple[int, ...], torch.dtype]]
    candidates: set[str]
    errors: list[FloatzipError]
    ratio: float
    encoded: set[str]
    source: str
    upcast: dict[str, torch.dtype]
    buffers: dict[str, tuple[tuple[int, ...], torch.dtype]]
    small: set[str]
    member_values: dict[tuple[int, int], torch.Tensor]

    def init_loading(self) -> None:
        self.expected = {}
        self.candidates = set()
        self.errors = []
        self.ratio = DEFAULT_RATIO
        self.encoded = set()
        self.source = "checkpoint"
        self.upcast = {}  # parameter -> the dtype the framework keeps it in (diffusers' fp32 modules)
        self.buffers = {}  # float buffers saved with the weights (SD3's position table): decoded as they load
        self.small = set()  # float parameters too small for a blob: they may arrive as group members (§2.4)
        self.member_values = {}  # (group record checksum, place) -> the member, decoded and checked

    def record_model(self, model: torch.nn.Module) -> None:
        for name, p in model.named_parameters(remove_duplicate=False):
            self.expected[name] = (tuple(p.shape), p.dtype)
            if spec.layout_for(p.dtype) is not None and p.numel() >= spec.MIN_ENCODED_NUMEL:
                self.candidates.add(name)
            elif spec.layout_for(p.dtype) is not None:
                self.small.add(name)
        for name, b in model.named_buffers(remove_duplicate=False):
            if spec.layout_for(b.dtype) is not None and b.numel() >= spec.MIN_ENCODED_NUMEL:
                self.buffers[name] = (tuple(b.shape), b.dtype)
            elif spec.layout_for(b.dtype) is not None:  # a float buffer saved with the weights (BatchNorm's)
                self.small.add(name)
                self.expected[name] = (tuple(b.shape), b.dtype)

    def decoded_buffer(self, name: str, blob: torch.Tensor) -> torch.Tensor:
        """A float buffer stored as a blob, decoded (and checked) as it arrives, in the dtype the model has."""
        from floatzip.decode import decompress_tensor

        where = f"{self.source}: tensor {name!r}"
        ct = CompressedTensor.from_bytes(blob.detach().cpu().numpy(), where)
        shape, dtype = self.buffers[name]
        if ct.shape != shape:
            raise FormatError(f"{where}: the blob holds shape {list(ct.shape)}, the model needs {list(shape)}")
        return decompress_tensor(ct).to(device=blob.device, dtype=dtype)

    def read_checkpoints(self, files: Iterable[str | Path]) -> None:
        blob_bytes = original_bytes = 0
        for f in files:
            path = Path(f)
            if path.suffix != ".safetensors":
                continue
            self.source = str(path.parent)
            header = read_header(path)
            encoded: frozenset[str] = frozenset()
            if spec.META_VERSION in header.metadata:
                cf = open_compressed(path)
                with path.open("rb") as fh:
                    check_stored_tensors(cf, fh)
                encoded = cf.encoded
                self._keep_members(cf)
            self.encoded.update(encoded)
            for e in header.entries:
                if e.name in encoded:
                    blob_bytes += e.nbytes
        if self.encoded:
            for name in self.encoded & self.candidates:
                shape, dtype = self.expected[name]
                original_bytes += math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
            if original_bytes and blob_bytes:
                self.ratio = min(1.0, blob_bytes / original_bytes)

    def _keep_members(self, cf: CompressedFile) -> None:
        """Decode the group records of ``cf`` (small: a few small tensors each), for the members' slots."""
        for name, value in member_tensors(cf).items():
            first, place = cf.members[name]
            key = (cf.records[first].crc, place)
            known = self.member_values.get(key)
            if known is not None and not (known.dtype == value.dtype and torch.equal(known, value)):
                raise FormatError(f"{cf.path}: two different group records share the checksum {key[0]:#010x}")
            self.member_values[key] = value

    def groups_arrive(self, name: str) -> bool:
        """Whether the parameter ``name`` may arrive as a group record or member mark (not its own shape)."""
        return bool(self.member_values) and name in self.small

    def member_value(self, t: torch.Tensor, where: str) -> torch.Tensor | None:
        """The decoded member a group record or member mark ``t`` stands for; None when ``t`` is neither."""
        if not (is_blob(t) and t.numel() >= groups.MARK_BYTES):
            return None
        head = t[: groups.MARK_BYTES].detach().cpu().numpy().tobytes()
        what = groups.kind(head)
        if what == "record":
            key = (int.from_bytes(head[4:8], "little"), 0)
        elif what == "mark" and t.numel() == groups.MARK_BYTES:
            key = groups.read_mark(head, where)
        else:
            return None
        value = self.member_values.get(key)
        if value is None:
            raise FormatError(f"{where}: names a group record that the checkpoint's files do not hold")
        return value

    def member_slot(self, name: str, t: torch.Tensor) -> torch.Tensor | None:
        """What the small parameter or buffer ``name`` holds when ``t``, as it arrived, is a group record or
        member mark: the member, decoded and checked, in the model's dtype and on ``t``'s device; else None."""
        where = f"{self.source}: tensor {name!r}"
        value = self.member_value(t, where) if name in self.small else None
        if value is None:
            return None
        shape, dtype = self.expected[name]
        if tuple(value.shape) != shape:
            raise FormatError(f"{where}: holds shape {list(value.shape)}, the model needs {list(shape)}")
        return value.to(device=t.device, dtype=dtype)

    def fill_members(self, model: torch.nn.Module) -> None:
        """Put each small parameter or buffer that arrived as a group record or member mark in its decoded form."""
        if not self.member_values:
            return
        filled: dict[int, torch.Tensor | None] = {}  # by the arrived tensor: a tied parameter stays one
        slots = [*((n, p, "_parameters") for n, p in model.named_parameters(remove_duplicate=False)),
                 *((n, b, "_buffers") for n, b in model.named_buffers(remove_duplicate=False))]  # fmt: skip
        for name, t, table in slots:
            if name not in self.small or t.dtype != torch.uint8:
                continue
            if id(t) not in filled:
                value = self.member_slot(name, t)
                filled[id(t)] = value if value is None or table == "_buffers" else blocks.parameter(value)
            value = filled[id(t)]
            if value is not None:
                module_path, _, attr = name.rpartition(".")
                module = model.get_submodule(module_path) if module_path else model
                getattr(module, table)[attr] = value

    def install_runtime(
        self,
        model: torch.nn.Module,
        *,
        device: torch.device | None,
        backend: str,
        offload: bool,
        fused: bool = False,
        cpu_strategy: str = "auto",
    ) -> None:
        if self.errors:
            raise self.errors[0]
        self.fill_members(model)
        compressed = self.compressed_params(model)
        if compressed:
            blocks.install(model, compressed, device=device, backend=backend, offload=offload, fused=fused,
                           cpu_strategy=cpu_strategy)  # fmt: skip

    def compressed_params(self, model: torch.nn.Module) -> dict[str, CompressedTensor]:
        """Parse the blobs, compress the float weights that arrived decoded; by parameter name."""
        by_id: dict[int, CompressedTensor | None] = {}
        out: dict[str, CompressedTensor] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            if name not in self.candidates:
                continue
            key = id(p)
            if key not in by_id:
                by_id[key] = self.to_compressed(model, name, p)
            ct = by_id[key]
            if ct is not None:
                out[name] = ct
        return out

    def to_compressed(self, model: torch.nn.Module, name: str, p: torch.Tensor) -> CompressedTensor | None:
        shape, dtype = self.expected[name]
        where = f"{self.source}: tensor {name!r}"
        if p.device.type == "meta":
            return None  # missing from the checkpoint: the framework reports it
        if is_blob(p) and dtype != torch.uint8:
            # no copy: the record decodes from the loaded tensor itself (on the CPU, often the file's own
            # mapping), which nothing else holds once the parameter slot becomes a view of the decode buffer
            ct = CompressedTensor.from_bytes(p.detach().cpu().numpy(), where, copy=False)
        elif tuple(p.shape) != shape:
            raise FormatError(f"{where}: holds shape {list(p.shape)}, the model needs {list(shape)}")
        elif spec.layout_for(p.dtype) is not None:
            ct = compress_tensor(p.detach())
            if ct.nbytes >= ct.original_nbytes:
                return None  # incompressible: keep it plain
        else:
            return None
        if ct.shape != shape:
            raise FormatError(f"{where}: the blob holds shape {list(ct.shape)}, the model needs {list(shape)}")
        if ct.dtype != dtype:
            if name in self.upcast:  # kept in a wider dtype by the framework: decoded once, kept plain
                from floatzip.decode import decompress_tensor

                _set_plain(model, name, decompress_tensor(ct).to(device=p.device, dtype=dtype))
                return None
            raise InputError(
                f"{where}: floatzip decodes this weight to {ct.dtype} exactly, but the model was built "
                f"in {dtype}; load with the checkpoint's dtype ({_dtype_arg(ct.dtype)})"
            )
        return ct


def _dtype_arg(dtype: torch.dtype) -> str:
    return f"dtype=torch.{str(dtype).removeprefix('torch.')}"


def _set_plain(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module_path, _, attr = name.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    module._parameters[attr] = blocks.parameter(value)


def names_under(model: torch.nn.Module, modules: Sequence[str]) -> set[str]:
    """Parameter names under any module whose name has one of ``modules`` as a component (diffusers' rule
    for ``_keep_in_fp32_modules``)."""
    wanted = set(modules)
    return {n for n, _ in model.named_parameters(remove_duplicate=False) if wanted & set(n.split("."))}


__all__ = [
    "DEFAULT_RATIO",
    "LOADING_OPTIONS",
    "LoadingMixin",
    "checked_format_version",
    "checked_loading_options",
    "is_blob",
    "names_under",
    "options_dict",
]
