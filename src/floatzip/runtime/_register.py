"""Register floatzip with transformers without importing transformers.

``import floatzip`` calls :func:`install`. If transformers' quantizer registry
(``transformers.quantizers.auto``) is already imported, floatzip registers at once. Otherwise a
one-shot finder on ``sys.meta_path`` waits for that module: it lets the normal finders locate it,
wraps the loader so that floatzip registers right after the module has executed, and removes itself.
``from_pretrained`` always imports that module first (``modeling_utils`` imports it at its top), so
the quant_method ``"floatzip"`` is known before any config is resolved.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

TARGET = "transformers.quantizers.auto"
QUANTIZER = "floatzip.runtime.quantizer"


class FloatzipRegistrationWarning(UserWarning):
    """floatzip could not register itself with this version of transformers."""


def _register() -> None:
    module = sys.modules.get(QUANTIZER)
    if module is not None and not hasattr(module, "register"):
        # floatzip.runtime.quantizer is being imported and its own import of transformers led here:
        # it registers itself once it has executed
        return
    try:
        from floatzip.runtime.quantizer import register

        register()
    except Exception as exc:  # never break `import transformers` because of floatzip
        warnings.warn(
            f"floatzip could not register its transformers quantizer ({type(exc).__name__}: {exc}); "
            "floatzip checkpoints will not load with from_pretrained",
            FloatzipRegistrationWarning,
            stacklevel=2,
        )


class _Loader(importlib.abc.Loader):
    """The real loader of the target module, plus registration once the module has executed."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _register()

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the real loader
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        _uninstall()  # one shot, and the finders below must not see us again
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]


def install() -> None:
    """Register now if transformers' quantizer registry is loaded, else when it loads."""
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def installed_hook() -> bool:
    """True while the import hook waits for transformers."""
    return any(isinstance(f, _Finder) for f in sys.meta_path)
