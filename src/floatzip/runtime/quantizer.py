"""The transformers integration: ``quant_method: "floatzip"`` as a registered quantizer.

Importing this module imports transformers; :mod:`floatzip.runtime._register` imports it only once
transformers' quantizer registry exists. How a compressed checkpoint loads:

1. ``_process_model_before_weight_loading`` records the shape and dtype every parameter must have
   and reads the checkpoint's headers (blob sizes, for the memory estimates of ``device_map="auto"``).
2. Loading: a blob is a U8 1-D tensor under the parameter's own name. ``param_needs_quantization`` is
   true for every float parameter that may be a blob, which is what lets transformers place a tensor
   whose shape differs from the parameter's. Where the model has its own weight converters (the
   per-expert weights of a MoE stacked into one tensor), a decode op runs first, so the converter
   works on the decoded tensors.
3. ``_process_model_after_weight_loading`` parses every blob (``CompressedTensor.from_bytes`` checks
   its checksum: a corrupt checkpoint raises FormatError/IntegrityError here, nothing loads silently
   wrong), checks its dtype and shape against the parameter's, compresses in memory the float weights
   that arrived decoded (MoE stacks; checkpoints saved decoded by ``save_pretrained``), and installs
   the block runtime (:mod:`floatzip.runtime.blocks`).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import torch
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from floatzip.decode import decompress_tensor
from floatzip.errors import FloatzipError, FormatError, InputError
from floatzip.format import spec
from floatzip.format.blob import HEAD_BYTES, CompressedTensor, blob_head
from floatzip.runtime import _df11_guard, blocks
from floatzip.runtime.loading import LoadingMixin, checked_format_version, checked_loading_options, options_dict
from floatzip.runtime.loading import is_blob as _is_blob


class FloatzipConfig(QuantizationConfigMixin):
    """``quantization_config`` of a floatzip checkpoint.

    A checkpoint's ``config.json`` holds ``quant_method`` and ``format_version``; ``offload``, ``backend``,
    ``fused`` and ``cpu_strategy`` are loading options, passed as ``from_pretrained(...,
    quantization_config=FloatzipConfig(offload=True))``. ``to_dict`` adds those that differ from their defaults,
    so that ``from_dict(to_dict())`` gives them back (and a model saved with ``save_pretrained`` keeps them).

    Args:
        format_version: the checkpoint's floatzip format version.
        offload: keep the compressed weights in host memory (pinned when CUDA exists), copy each block's
            bytes to its device just before decoding it.
        backend: decode backend, ``"auto"`` (the CUDA kernel on CUDA, the compiled core on the CPU), ``"cpu"``,
            ``"cuda"``, or ``"emulated"`` (the CUDA kernel's batch decoded on the CPU by its own code: for tests).
        fused: opt-in: the Linear layers of each GPU block run floatzip's fused decode-GEMV when their input has
            at most 8 rows (batch-1 generation), the weights read compressed and never written. Not bit-identical
            to the BF16 model (fp32 sums in another order than cuBLAS; bound in docs/KERNELS.md); larger inputs
            (prefill) stay bit-identical. Off by default.
        cpu_strategy: how weights decoded on the CPU are held (:mod:`floatzip.runtime.strategy`): ``"once"``
            decodes them all at load into plain parameters (the plain model's speed and memory; CRCs checked, the
            compressed bytes dropped), ``"per_unit"`` decodes each block just before it runs (the least memory),
            ``"auto"`` (default) decodes once when the decoded weights fit the available memory with a clear margin.
    """

    def __init__(
        self,
        format_version: int = spec.FORMAT_VERSION,
        offload: bool = False,
        backend: str = "auto",
        fused: bool = False,
        cpu_strategy: str = "auto",
        **kwargs: Any,
    ) -> None:
        self.quant_method = spec.QUANT_METHOD  # type: ignore[assignment]
        self.format_version = checked_format_version(format_version)
        options = checked_loading_options(offload=offload, backend=backend, fused=fused, cpu_strategy=cpu_strategy,
                                          where="FloatzipConfig")  # fmt: skip
        self.offload: bool = options["offload"]
        self.backend: str = options["backend"]
        self.fused: bool = options["fused"]
        self.cpu_strategy: str = options["cpu_strategy"]

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": spec.QUANT_METHOD, "format_version": self.format_version, **options_dict(self)}

    def get_loading_attributes(self) -> dict[str, Any]:
        return {"offload": self.offload, "backend": self.backend, "fused": self.fused,
                "cpu_strategy": self.cpu_strategy}  # fmt: skip


def _decode_blob(t: torch.Tensor, where: str) -> torch.Tensor:
    """Decode the floatzip blob ``t`` (a U8 1-D tensor) on its device."""
    ct = CompressedTensor.from_bytes(t.detach().cpu().numpy(), where)
    return decompress_tensor(ct).to(t.device)


def _header_guess(t: torch.Tensor) -> tuple[tuple[int, ...], torch.dtype] | None:
    """Shape and dtype named by a blob's fixed header, if they look sane (only used for placeholders)."""
    head = t[:HEAD_BYTES].detach().cpu().numpy().tobytes()
    if len(head) < spec.V1_HEADER_FIXED:
        return None
    if head[4] != 1:  # version 2, or packed
        try:
            layout, shape, _ = blob_head(head, "blob")
        except FormatError:
            return None
    else:
        v1, ndim = spec.LAYOUT_BY_CODE.get(head[6]), head[7]
        if v1 is None or ndim > spec.MAX_NDIM or len(head) < spec.V1_HEADER_FIXED + 8 * ndim:
            return None
        layout, shape = v1, struct.unpack_from(f"<{ndim}Q", head, spec.V1_HEADER_FIXED)
    # a real blob holds at least a bit per weight: a header claiming far more weights than its bytes could
    # is corrupt, and its shape must not size even a placeholder (a 32 GiB one was once attempted)
    if math.prod(shape) > 8 * t.numel():
        return None
    return tuple(int(s) for s in shape), layout.torch_dtype


_OPS: dict[str, type] = {}


def _op_classes() -> tuple[type, type]:
    """The decode op run before a model's own weight converters, and its (identity) reverse."""
    if not _OPS:
        from transformers.core_model_loading import ConversionOps

        class FloatzipIdentity(ConversionOps):
            """Saving writes decoded weights: nothing to undo."""

            def convert(self, input_dict: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
                return input_dict

        class FloatzipDecode(ConversionOps):
            """Decode the blobs among a converter's inputs (e.g. the experts of a MoE, before stacking)."""

            def __init__(self, quantizer: FloatzipHfQuantizer) -> None:
                self._quantizer = quantizer  # not `hf_quantizer`: transformers would then skip dtype casts

            def __deepcopy__(self, memo: dict[int, Any]) -> FloatzipDecode:
                # transformers deep-copies converters per weight: errors must reach the one quantizer
                return FloatzipDecode(self._quantizer)

            def convert(
                self,
                input_dict: dict[str, Any],
                *args: Any,
                full_layer_name: str | None = None,
                **kwargs: Any,
            ) -> dict[str, Any]:
                out: dict[str, list[torch.Tensor]] = {}
                failed: list[tuple[str, int, torch.Tensor]] = []
                for key, tensors in input_dict.items():
                    out[key] = []
                    for i, t in enumerate(tensors if isinstance(tensors, list) else [tensors]):
                        if not _is_blob(t):
                            out[key].append(t)
                            continue
                        where = (
                            f"{self._quantizer.source}: tensor {key!r} #{i} (a checkpoint name pattern), "
                            f"for {full_layer_name}"
                        )
                        try:
                            member = self._quantizer.member_value(t, where)
                            out[key].append(member.to(t.device) if member is not None else _decode_blob(t, where))
                        except FloatzipError as exc:
                            # transformers would log the error, skip the weight, then fail with a generic
                            # RuntimeError: record floatzip's error instead (the quantizer raises it once
                            # loading ends, before from_pretrained returns), with a placeholder meanwhile
                            self._quantizer.errors.append(exc)
                            out[key].append(t)
                            failed.append((key, len(out[key]) - 1, t))
                for key, i, t in failed:
                    siblings = [u for u in out[key] if not _is_blob(u)]
                    guess = (tuple(siblings[0].shape), siblings[0].dtype) if siblings else _header_guess(t)
                    if guess is None:
                        raise self._quantizer.errors[-1]
                    out[key][i] = torch.zeros(guess[0], dtype=guess[1], device=t.device)
                return out

            @property
            def reverse_op(self) -> ConversionOps:
                return FloatzipIdentity()

        _OPS["decode"] = FloatzipDecode
        _OPS["identity"] = FloatzipIdentity
    return _OPS["decode"], _OPS["identity"]


class FloatzipHfQuantizer(LoadingMixin, HfQuantizer):
    """Loads floatzip checkpoints and runs them compressed, one block decoded at a time."""

    requires_calibration = False

    quantization_config: FloatzipConfig

    def __init__(self, quantization_config: FloatzipConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.init_loading()
        self.target_device: torch.device | None = None

    # -- before loading ------------------------------------------------------------------
    def validate_environment(self, *args: Any, device_map: Any = None, **kwargs: Any) -> None:
        cfg = self.quantization_config  # transformers sets the loading options on it without __init__'s checks
        checked_loading_options(offload=cfg.offload, backend=cfg.backend, fused=cfg.fused,
                                cpu_strategy=cfg.cpu_strategy, where="FloatzipConfig")  # fmt: skip
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise InputError(
                "floatzip keeps compressed weights in memory and cannot offload to disk; use "
                "quantization_config=FloatzipConfig(offload=True) to keep them in host memory instead"
            )

    def update_device_map(self, device_map: Any) -> Any:
        if not self.quantization_config.offload:
            return device_map
        # offload: load everything into host memory; the runtime moves what must run to the device
        self.target_device = _offload_target(device_map)
        return {"": "cpu"}

    def _process_model_before_weight_loading(
        self, model: torch.nn.Module, checkpoint_files: list[str] | None = None, **kwargs: Any
    ) -> torch.nn.Module:
        self.record_model(model)
        self.read_checkpoints(checkpoint_files or [])
        self._shield_init(model)
        return model

    def _shield_init(self, model: torch.nn.Module) -> None:
        """transformers runs every module's ``_init_weights`` once loading ends; it skips the tensors that were
        loaded, but some read a shape first (ResNet's fan-in of a Linear weight), which a blob, group record or
        member mark does not have. While it runs, each stands aside for an empty meta tensor of the
        parameter's shape and dtype, marked loaded."""
        from transformers import PreTrainedModel

        prefixes = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        for sub in model.modules():
            if isinstance(sub, PreTrainedModel):
                sub.__dict__["_init_weights"] = self._shielded(sub._init_weights, prefixes)

    def _shielded(self, init: Any, prefixes: dict[int, str]) -> Any:
        def shielded(module: torch.nn.Module) -> Any:
            prefix = prefixes.get(id(module), "")
            aside: list[tuple[dict[str, Any], str, torch.Tensor]] = []
            tables: tuple[dict[str, Any], ...] = (module._parameters, module._buffers)
            for table in tables:
                for attr, t in list(table.items()):
                    name = f"{prefix}.{attr}" if prefix else attr
                    wanted = self.expected.get(name)
                    if t is None or not _is_blob(t) or wanted is None or wanted[1] == torch.uint8:
                        continue
                    stand: torch.Tensor = torch.empty(wanted[0], dtype=wanted[1], device="meta")
                    if table is module._parameters:
                        stand = blocks.parameter(stand)
                    stand._is_hf_initialized = True  # type: ignore[attr-defined]
                    aside.append((table, attr, t))
                    table[attr] = stand
            try:
                return init(module)
            finally:
                for table, attr, t in aside:
                    table[attr] = t

        return shielded

    def param_needs_quantization(self, model: torch.nn.Module, param_name: str, **kwargs: Any) -> bool:
        # True lets a blob (U8, 1-D) take the place of a float parameter of another shape
        # and a group record or member mark that of a small parameter (docs/FORMAT.md §2.4)
        return bool(self.pre_quantized) and (param_name in self.candidates or self.groups_arrive(param_name))

    def param_element_size(self, model: torch.nn.Module, param_name: str, param: torch.Tensor) -> float:
        if param_name in self.candidates:
            return float(param.element_size()) * self.ratio
        return float(param.element_size())

    def update_weight_conversions(self, weight_conversions: list[Any], model: torch.nn.Module) -> list[Any]:
        from transformers.core_model_loading import WeightConverter

        decode_op, _ = _op_classes()
        updated = []
        for conv in weight_conversions:
            if isinstance(conv, WeightConverter):
                ops = [decode_op(self), *conv.operations]
                conv = conv.copy(conv._original_source_patterns, conv._original_target_patterns, operations=ops)
            updated.append(conv)
        return updated

    # -- after loading -------------------------------------------------------------------
    def _process_model_after_weight_loading(self, model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
        for sub in model.modules():
            sub.__dict__.pop("_init_weights", None)  # the model's own again (see _shield_init)
        cfg = self.quantization_config
        self.install_runtime(model, device=self.target_device, backend=cfg.backend, offload=cfg.offload,
                             fused=cfg.fused, cpu_strategy=cfg.cpu_strategy)  # fmt: skip
        return model

    # -- the rest of the interface -------------------------------------------------------
    def is_serializable(self, safe_serialization: bool | None = None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    def get_state_dict_and_metadata(self, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor] | None, dict]:
        """``save_pretrained`` writes the decoded weights (the original model's, bit for bit);
        ``floatzip.compress_model`` compresses a model into a floatzip checkpoint."""
        rt = blocks.runtime_of(model)
        if rt is None:
            return None, {}
        state = dict(model.state_dict())
        decoded = rt.decoded_tensors("cpu")
        for name, t in decoded.items():
            if name in state:
                state[name] = t
        return state, {}

    def _dequantize(self, model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
        rt = blocks.runtime_of(model)
        if rt is not None:
            rt.materialize(model)
        return model


def _offload_target(device_map: Any) -> torch.device:
    """The device an offloaded model runs on: the first accelerator named in ``device_map``."""
    if device_map is None or device_map == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if isinstance(device_map, dict):
        devices = [torch.device(d if not isinstance(d, int) else f"cuda:{d}") for d in device_map.values()
                   if d not in ("disk",)]  # fmt: skip
        accel = [d for d in devices if d.type != "cpu"]
        if len({str(d) for d in accel}) > 1:
            raise InputError("floatzip's offload runs the model on one device; give device_map a single device")
        return accel[0] if accel else torch.device("cpu")
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    return torch.device(device_map)


def register() -> None:
    """Register the floatzip config and quantizer with transformers (idempotent)."""
    import transformers.quantizers.auto as auto  # already imported when the hook calls us

    _df11_guard.install()  # from_pretrained on a DF11 checkpoint: one line saying how to convert it
    mapping = auto.AUTO_QUANTIZER_MAPPING
    configs = auto.AUTO_QUANTIZATION_CONFIG_MAPPING
    if mapping.get(spec.QUANT_METHOD) is FloatzipHfQuantizer and configs.get(spec.QUANT_METHOD) is FloatzipConfig:
        return
    # a reload of floatzip replaces our own earlier classes; anything else under our name is refused
    for table in (mapping, configs):
        current = table.get(spec.QUANT_METHOD)
        if current is not None and current.__module__ != __name__:
            raise InputError(f"transformers already has a quant_method {spec.QUANT_METHOD!r} from {current.__module__}")
        table.pop(spec.QUANT_METHOD, None)
    auto.register_quantization_config(spec.QUANT_METHOD)(FloatzipConfig)
    auto.register_quantizer(spec.QUANT_METHOD)(FloatzipHfQuantizer)
    # transformers merges loading options (offload, backend) passed to from_pretrained into the stored
    # config only for the config types in this tuple
    types = getattr(auto, "LOADING_ATTRIBUTES_CONFIG_TYPES", None)
    if isinstance(types, tuple) and FloatzipConfig not in types:
        auto.LOADING_ATTRIBUTES_CONFIG_TYPES = (*types, FloatzipConfig)


__all__ = ["FloatzipConfig", "FloatzipHfQuantizer", "register"]

register()  # importing this module imports transformers anyway: floatzip is then known to it
