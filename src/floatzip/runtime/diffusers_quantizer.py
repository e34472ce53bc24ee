"""The diffusers integration: ``quant_method: "floatzip"`` in diffusers' quantizer registry.

Importing this module imports diffusers; :mod:`floatzip.runtime._register` imports it only once
``diffusers.quantizers.auto`` exists. A diffusers model (a FLUX, SD3, Wan or Qwen-Image transformer, a
UNet, a VAE) then loads from a floatzip checkpoint with its own ``from_pretrained`` and runs from the
compressed weights, one block decoded at a time; a whole ``DiffusionPipeline.from_pretrained`` works the
same way, its transformers components (text encoders) going through floatzip's transformers quantizer.

How diffusers hands tensors over: a blob (U8, 1-D) arrives under its parameter's name with a shape the
parameter does not have; :meth:`check_if_quantized_param` claims it and :meth:`create_quantized_param`
puts it in the parameter's slot as it is. Once every tensor is in, the shared steps of
:class:`floatzip.runtime.loading.LoadingMixin` check and install. Modules diffusers keeps in float32
(``_keep_in_fp32_modules``) are kept so here too: their weights are decoded once and upcast, as a plain
load does, so that the outputs stay bit-identical to the plain model's.

Loading options (``backend``, ``fused``, ``cpu_strategy``, as for transformers' ``FloatzipConfig``) are passed as
``from_pretrained(..., quantization_config=FloatzipDiffusersConfig(cpu_strategy="per_unit"))``. diffusers itself
keeps a pre-quantized checkpoint's config and drops (with a warning) one passed to ``from_pretrained``: floatzip's
registration wraps that merge so that, for a floatzip checkpoint and a :class:`FloatzipDiffusersConfig`, the
checkpoint's config is kept and the passed config's loading options are set on it (what transformers does for the
config types it lists). ``offload`` is not available here: floatzip decodes on the device the model is on (the CUDA
kernel on CUDA, the compiled core on the CPU).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import torch
from diffusers.quantizers.base import DiffusersQuantizer
from diffusers.quantizers.quantization_config import QuantizationConfigMixin

from floatzip.errors import InputError
from floatzip.format import spec
from floatzip.runtime import blocks
from floatzip.runtime.loading import (
    LoadingMixin,
    checked_format_version,
    checked_loading_options,
    is_blob,
    names_under,
    options_dict,
)

if TYPE_CHECKING:
    from diffusers.models.modeling_utils import ModelMixin


class FloatzipMethod(str, enum.Enum):
    """diffusers reads ``quant_method.value``: the method as a string enum, like diffusers' own."""

    FLOATZIP = spec.QUANT_METHOD


class FloatzipDiffusersConfig(QuantizationConfigMixin):
    """``quantization_config`` of a floatzip checkpoint, as diffusers reads it (see
    :class:`floatzip.FloatzipConfig` for transformers, whose ``backend``, ``fused`` and ``cpu_strategy`` loading
    options it shares; ``to_dict`` adds those that differ from their defaults, so ``from_dict`` gives them back)."""

    def __init__(
        self,
        format_version: int = spec.FORMAT_VERSION,
        offload: bool = False,
        backend: str = "auto",
        fused: bool = False,
        cpu_strategy: str = "auto",
        **kwargs: Any,
    ) -> None:
        # diffusers types quant_method as its own enum, which has no member for a method outside diffusers
        self.quant_method = FloatzipMethod.FLOATZIP  # type: ignore[assignment]
        self.format_version = checked_format_version(format_version)
        # the same parameters as FloatzipConfig's, which diffusers' PipelineQuantizationConfig(quant_backend=
        # "floatzip", quant_kwargs=...) requires of the two; offload itself is the transformers path's only
        if offload:
            raise InputError("FloatzipDiffusersConfig: offload is not available for diffusers models (floatzip decodes "
                             "on the device the model is on); load without it")  # fmt: skip
        options = checked_loading_options(offload=False, backend=backend, fused=fused, cpu_strategy=cpu_strategy,
                                          where="FloatzipDiffusersConfig")  # fmt: skip
        self.backend: str = options["backend"]
        self.fused: bool = options["fused"]
        self.cpu_strategy: str = options["cpu_strategy"]

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": spec.QUANT_METHOD, "format_version": self.format_version, **options_dict(self)}

    def get_loading_attributes(self) -> dict[str, Any]:
        return {"backend": self.backend, "fused": self.fused, "cpu_strategy": self.cpu_strategy}

    def to_diff_dict(self) -> dict[str, Any]:  # diffusers' repr and to_json_string call it
        return self.to_dict()


class FloatzipDiffusersQuantizer(LoadingMixin, DiffusersQuantizer):
    """Loads floatzip checkpoints into diffusers models and runs them compressed."""

    quantization_config: FloatzipDiffusersConfig
    requires_calibration = False
    use_keep_in_fp32_modules = True  # the same float32 modules as a plain load, for identical outputs

    def __init__(self, quantization_config: FloatzipDiffusersConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.init_loading()
        self.checkpoint_files: list[str] = []

    # -- before loading ------------------------------------------------------------------
    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        cfg = self.quantization_config
        checked_loading_options(offload=False, backend=cfg.backend, fused=cfg.fused, cpu_strategy=cfg.cpu_strategy,
                                where="FloatzipDiffusersConfig")  # fmt: skip
        if "torch_dtype" in kwargs and kwargs["torch_dtype"] is None:
            raise InputError(
                "a floatzip checkpoint runs in the dtype it was stored in: pass it to from_pretrained "
                "(torch_dtype=torch.bfloat16 for a BF16 checkpoint)"
            )
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise InputError("floatzip keeps compressed weights in memory and cannot offload to disk")

    def maybe_update_loaded_keys(self, loaded_keys: list[str], checkpoint_files: list[str]) -> list[str]:
        self.checkpoint_files = [str(f) for f in checkpoint_files or []]
        return loaded_keys

    def _process_model_before_weight_loading(
        self, model: torch.nn.Module, keep_in_fp32_modules: list[str] | None = None, **kwargs: Any
    ) -> torch.nn.Module:
        self.record_model(model)
        for name in names_under(model, keep_in_fp32_modules or []):
            # diffusers casts these to float32 as they load (the skeleton is still in torch_dtype)
            shape, dtype = self.expected[name]
            if dtype.is_floating_point:
                self.expected[name] = (shape, torch.float32)
                self.upcast[name] = torch.float32
        self.read_checkpoints(self.checkpoint_files)
        return model

    def check_if_quantized_param(
        self, model: torch.nn.Module, param_value: torch.Tensor, param_name: str, state_dict: dict[str, Any],
        **kwargs: Any,
    ) -> bool:  # fmt: skip
        return (
            bool(self.pre_quantized)
            and (param_name in self.candidates or param_name in self.buffers or self.groups_arrive(param_name))
            and is_blob(param_value)
        )

    def check_quantized_param_shape(self, *args: Any, **kwargs: Any) -> bool:
        return True  # the blob's own header gives its shape, checked against the parameter's after loading

    def create_quantized_param(self, *args: Any, **kwargs: Any) -> torch.nn.Parameter:
        """Put the blob in its parameter's slot as it is; diffusers passes (model, value, name, device, ...)."""
        model, param_value, param_name, target_device = args[:4]
        module_path, _, attr = param_name.rpartition(".")
        module = model.get_submodule(module_path) if module_path else model
        device = torch.device(target_device if not isinstance(target_device, int) else f"cuda:{target_device}")
        member = self.member_slot(param_name, param_value.to(device))  # a small tensor, coded in a group
        if member is not None:
            if attr in module._buffers:
                module._buffers[attr] = member
                return blocks.parameter(member)
            module._parameters[attr] = param = blocks.parameter(member)
            return param
        if param_name in self.buffers:
            module._buffers[attr] = self.decoded_buffer(param_name, param_value.to(device))
            return blocks.parameter(module._buffers[attr])
        param = blocks.parameter(param_value.to(device))
        module._parameters[attr] = param
        return param

    def adjust_target_dtype(self, torch_dtype: torch.dtype) -> torch.dtype:
        return torch_dtype

    def get_cuda_warm_up_factor(self) -> int:
        return 8  # about two thirds of the BF16 bytes arrive: pre-allocate no more than a plain load would

    # -- after loading -------------------------------------------------------------------
    def _process_model_after_weight_loading(self, model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
        cfg = self.quantization_config
        self.install_runtime(model, device=None, backend=cfg.backend, offload=False, fused=cfg.fused,
                             cpu_strategy=cfg.cpu_strategy)  # fmt: skip
        return model

    # -- the rest of the interface -------------------------------------------------------
    @property
    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return False

    def get_state_dict_and_metadata(
        self, state_dict: dict[str, Any], safe_serialization: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``save_pretrained`` writes the decoded weights (the original model's, bit for bit); to write a
        floatzip checkpoint, compress the saved folder with ``floatzip compress``."""
        model = getattr(self, "_model", None)
        rt = blocks.runtime_of(model) if model is not None else None
        if rt is None:
            return state_dict, {}
        decoded = rt.decoded_tensors("cpu")
        return {k: decoded.get(k, v) for k, v in state_dict.items()}, {}

    def postprocess_model(self, model: ModelMixin, **kwargs: Any) -> torch.nn.Module:
        out = super().postprocess_model(model, **kwargs)
        self._model = model
        return out

    def _dequantize(self, model: torch.nn.Module) -> torch.nn.Module:
        rt = blocks.runtime_of(model)
        if rt is not None:
            rt.materialize(model)
        return model


def register() -> None:
    """Register the floatzip config and quantizer with diffusers (idempotent)."""
    import diffusers.quantizers.auto as auto  # already imported when the hook calls us

    mapping: dict[str, Any] = auto.AUTO_QUANTIZER_MAPPING
    configs: dict[str, Any] = auto.AUTO_QUANTIZATION_CONFIG_MAPPING
    for table, ours in ((mapping, FloatzipDiffusersQuantizer), (configs, FloatzipDiffusersConfig)):
        current = table.get(spec.QUANT_METHOD)
        if current is not None and current.__module__ != __name__:
            raise InputError(f"diffusers already has a quant_method {spec.QUANT_METHOD!r} from {current.__module__}")
        table[spec.QUANT_METHOD] = ours  # diffusers has no registration function: its tables are the registry
    _wrap_merge(auto.DiffusersAutoQuantizer)


def _is_floatzip(config: Any) -> bool:
    method = config.get("quant_method") if isinstance(config, dict) else getattr(config, "quant_method", None)
    return str(getattr(method, "value", method)) == spec.QUANT_METHOD


def _wrap_merge(auto_quantizer: Any) -> None:
    """Let ``from_pretrained(..., quantization_config=FloatzipDiffusersConfig(...))`` on a floatzip checkpoint set
    the loading options (diffusers would drop the passed config); every other case goes to diffusers' own merge.
    Idempotent: a reload of this module wraps diffusers' original again, not an earlier wrapper."""
    current = auto_quantizer.__dict__["merge_quantization_configs"].__func__
    original = getattr(current, "_floatzip_original", current)

    def merge_quantization_configs(cls: Any, quantization_config: Any, quantization_config_from_args: Any) -> Any:
        if type(quantization_config_from_args).__name__ == "FloatzipDiffusersConfig" and _is_floatzip(
            quantization_config
        ):
            merged = original(cls, quantization_config, None)  # the checkpoint's config, as diffusers builds it
            for key, value in quantization_config_from_args.get_loading_attributes().items():
                setattr(merged, key, value)
            return merged
        return original(cls, quantization_config, quantization_config_from_args)

    merge_quantization_configs._floatzip_original = original  # type: ignore[attr-defined]
    auto_quantizer.merge_quantization_configs = classmethod(merge_quantization_configs)


__all__ = ["FloatzipDiffusersConfig", "FloatzipDiffusersQuantizer", "register"]

register()
