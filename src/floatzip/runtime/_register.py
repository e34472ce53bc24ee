"""Register floatzip with transformers and diffusers without importing either.

``import floatzip`` calls :func:`install`. For each framework whose quantizer registry
(``transformers.quantizers.auto``, ``diffusers.quantizers.auto``) is already imported, floatzip
registers at once. For the others a finder on ``sys.meta_path`` waits for those modules: it lets the
normal finders locate each, wraps its loader so that floatzip registers right after the module has
executed, and removes itself once it has seen them all. Both frameworks' ``from_pretrained`` import
their registry first (their ``modeling_utils`` imports it at its top), so the quant_method
``"floatzip"`` is known before any config is resolved.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

TARGET = "transformers.quantizers.auto"
DIFFUSERS_TARGET = "diffusers.quantizers.auto"
QUANTIZERS = {TARGET: "floatzip.runtime.quantizer", DIFFUSERS_TARGET: "floatzip.runtime.diffusers_quantizer"}


class FloatzipRegistrationWarning(UserWarning):
    """floatzip could not register itself with this version of transformers or diffusers."""


def _register(target: str) -> None:
    name = QUANTIZERS[target]
    module = sys.modules.get(name)
    if module is not None and not hasattr(module, "register"):
        # floatzip's quantizer module is being imported and its own import of the framework led here:
        # it registers itself once it has executed
        return
    try:
        importlib.import_module(name).register()
    except Exception as exc:  # never break `import transformers` (or diffusers) because of floatzip
        framework = target.partition(".")[0]
        warnings.warn(
            f"floatzip could not register its {framework} quantizer ({type(exc).__name__}: {exc}); "
            f"floatzip checkpoints will not load with {framework}'s from_pretrained",
            FloatzipRegistrationWarning,
            stacklevel=2,
        )


class _Loader(importlib.abc.Loader):
    """The real loader of the target module, plus registration once the module has executed."""

    def __init__(self, inner: importlib.abc.Loader, target: str) -> None:
        self._inner = inner
        self._target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _register(self._target)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the real loader
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, targets: set[str]) -> None:
        self.waiting = targets

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.waiting:
            return None
        self.waiting.discard(fullname)  # one shot per module
        if not self.waiting:
            _uninstall()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is None or finder is self:  # the finders below must not see us again
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


def _finder() -> _Finder | None:
    return next((f for f in sys.meta_path if isinstance(f, _Finder)), None)


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]


def install() -> None:
    """Register now with each framework whose quantizer registry is loaded, else when it loads."""
    waiting = set()
    for target in QUANTIZERS:
        if target in sys.modules:
            _register(target)
        else:
            waiting.add(target)
    finder = _finder()
    if finder is not None:
        finder.waiting = waiting
        if not waiting:
            _uninstall()
    elif waiting:
        sys.meta_path.insert(0, _Finder(waiting))


def installed_hook(target: str = TARGET) -> bool:
    """True while the import hook waits for ``target`` (by default transformers' registry)."""
    finder = _finder()
    return finder is not None and target in finder.waiting
