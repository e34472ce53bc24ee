"""``from_pretrained`` on a DFloat11 (DF11) checkpoint: one clear error instead of a random model.

transformers does not know DF11: it reads a DF11 directory's ``config.json`` (``dfloat11_config``,
no ``quantization_config``), finds none of the weights it expects, initialises them at random and
returns a model that runs and says nothing of it. No quantizer hook fires for such a config, so
floatzip wraps transformers' ``get_hf_quantizer`` (the first step of ``from_pretrained`` that sees the
loaded config) to raise an :class:`InputError` whose one line is the command that converts the
checkpoint. Every other config passes through untouched; DFloat11's own loader, which builds its
model with ``from_config``, is not affected.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from floatzip.errors import InputError

CONFIG_KEY = "dfloat11_config"
_MARK = "__floatzip_df11_guard__"


def message(config: Any) -> str:
    """The one line for a config that carries a ``dfloat11_config``."""
    from floatzip.convert.df11 import df11_hint

    name = str(getattr(config, "_name_or_path", "") or "this checkpoint")
    hint = df11_hint(name)
    if hint is None:  # not a local directory (a hub name): the command still applies once it is downloaded
        hint = (f"{name} is a DFloat11 (DF11) checkpoint, which floatzip reads once converted (losslessly, "
                f"no GPU needed): floatzip convert DF11_DIR FLOATZIP_DIR")  # fmt: skip
    return f"{hint}; then from_pretrained that directory (transformers alone would load random weights)"


def _guarded(get_hf_quantizer: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(get_hf_quantizer, _MARK, False):
        return get_hf_quantizer

    @functools.wraps(get_hf_quantizer)
    def guard(config: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(getattr(config, CONFIG_KEY, None), dict):
            raise InputError(message(config))
        return get_hf_quantizer(config, *args, **kwargs)

    setattr(guard, _MARK, True)
    return guard


def install() -> None:
    """Wrap ``get_hf_quantizer`` where ``from_pretrained`` finds it (idempotent).

    Called when transformers' quantizer registry has just been imported: ``modeling_utils`` then binds
    the wrapped function by name; if ``modeling_utils`` was imported earlier, its binding is wrapped too.
    """
    for name in ("transformers.quantizers.auto", "transformers.modeling_utils"):
        module = sys.modules.get(name)
        if module is not None and callable(getattr(module, "get_hf_quantizer", None)):
            module.get_hf_quantizer = _guarded(module.get_hf_quantizer)  # type: ignore[attr-defined]
