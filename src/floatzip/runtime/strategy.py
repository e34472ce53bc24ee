"""How a model that runs on the CPU holds its weights: decoded once at load, or each unit just before it runs.

``cpu_strategy`` (an option of :func:`floatzip.runtime.blocks.install` and of every loading path):

* ``"once"``: every compressed weight decoded by a CPU backend is decoded at load, by the same decoder the units
  use and checked against its CRC, into a plain parameter of its own; the compressed bytes are dropped. The model
  then runs at the plain model's speed and takes the plain model's memory.
* ``"per_unit"``: the weights stay compressed and each unit is decoded into the shared buffer just before it runs
  (:mod:`floatzip.runtime.blocks`): the least memory, a decode per unit per forward.
* ``"auto"`` (the default): ``"once"`` when the decoded weights fit the memory available now with a clear margin
  (:func:`fits`: a quarter more than they need, and 1 GiB besides), else ``"per_unit"``.

GPU units (and the ``emulated`` backend, which stands in for the GPU) always decode per unit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from floatzip.errors import InputError

CPU_STRATEGIES = ("auto", "once", "per_unit")
ONCE_HEADROOM = 0.25
"""``auto`` decodes once only when a quarter more than the decoded weights is available..."""
ONCE_RESERVE = 1 << 30
"""... and 1 GiB besides (activations, the KV cache, the rest of the process and the machine)."""

_NO_LIMIT = 1 << 60  # a cgroup "limit" above this is none (cgroup v1 writes 2^63 rounded down to a page)


def check_cpu_strategy(value: object, *, offload: bool = False) -> str:
    """``value`` if it is one of :data:`CPU_STRATEGIES` (and not ``"once"`` with ``offload``), else InputError."""
    if not isinstance(value, str) or value not in CPU_STRATEGIES:
        raise InputError(f"cpu_strategy must be one of {', '.join(map(repr, CPU_STRATEGIES))}, not {value!r}")
    if offload and value == "once":
        raise InputError("cpu_strategy='once' decodes every weight at load, offload=True keeps them compressed: "
                         "choose one")  # fmt: skip
    return value


def required_bytes(needed: int) -> int:
    """What ``auto`` asks to be available before it decodes ``needed`` bytes of weights at load."""
    return needed + int(needed * ONCE_HEADROOM) + ONCE_RESERVE


def fits(needed: int, available: int) -> bool:
    return required_bytes(needed) <= available


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass
    return 0


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes the process's memory cgroup (v2, else v1) still allows, reclaimable page cache counted as free;
    None when no limit is set."""
    limit = _read_int(root / "memory.max")
    if limit is not None:
        used = _read_int(root / "memory.current") or 0
        cache = _stat_value(root / "memory.stat", "inactive_file")
    else:
        limit = _read_int(root / "memory" / "memory.limit_in_bytes")
        used = _read_int(root / "memory" / "memory.usage_in_bytes") or 0
        cache = _stat_value(root / "memory" / "memory.stat", "total_inactive_file")
    if limit is None or limit >= _NO_LIMIT:
        return None
    return max(0, limit - used + cache)


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory() -> tuple[int | None, str]:
    """Bytes of memory this process could still take now, and where the figure comes from: the kernel's estimate
    (``MemAvailable`` in /proc/meminfo), capped by the memory cgroup's limit, else the free pages
    (``os.sysconf``); ``(None, why)`` when the system says neither."""
    figure, source = _meminfo_available(), "MemAvailable in /proc/meminfo"
    if figure is None:
        try:
            figure = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            source = "free pages (os.sysconf)"
        except (ValueError, OSError, AttributeError):
            return None, "the available memory is unknown here"
    room = _cgroup_room()
    if room is not None and room < figure:
        figure, source = room, "the memory cgroup's limit less its usage"
    return figure, source


def _size(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.2f} MiB"


@dataclass(frozen=True)
class CpuDecision:
    """Which ``cpu_strategy`` is in force, what was asked, and why."""

    strategy: str  # "once" or "per_unit"
    asked: str  # "auto", "once" or "per_unit"
    reason: str
    needed_bytes: int = 0  # the weights a CPU backend decodes, decoded
    required_bytes: int = 0  # what "auto" asked to be available for "once"
    available_bytes: int | None = None  # the figure "auto" compared with (None: not consulted, or unknown)


def decide(asked: str, needed: int, *, offload: bool = False, available: int | None = None) -> CpuDecision:
    """The strategy for ``needed`` bytes of decoded weights on the CPU. ``available`` overrides the figure
    :func:`available_memory` reads (``auto`` only)."""
    check_cpu_strategy(asked, offload=offload)
    if needed == 0:
        return CpuDecision("per_unit", asked, "no compressed weight is decoded on the CPU (GPU units decode per unit)")
    if asked != "auto":
        return CpuDecision(asked, asked, f"asked for (cpu_strategy={asked!r})", needed)
    if offload:
        return CpuDecision("per_unit", asked, "offload=True keeps the weights compressed", needed)
    source = "given"
    if available is None:
        available, source = available_memory()
    want = required_bytes(needed)
    if available is None:
        return CpuDecision("per_unit", asked, f"{source}: decoding per unit, which needs the least", needed, want)
    verdict = "fit in" if fits(needed, available) else "do not fit in"
    figures = (f"the decoded weights ({_size(needed)}) + {ONCE_HEADROOM:.0%} + {_size(ONCE_RESERVE)} = {_size(want)} "
               f"{verdict} the {_size(available)} available ({source})")  # fmt: skip
    return CpuDecision("once" if fits(needed, available) else "per_unit", asked, figures, needed, want, available)


__all__ = [
    "CPU_STRATEGIES",
    "ONCE_HEADROOM",
    "ONCE_RESERVE",
    "CpuDecision",
    "available_memory",
    "check_cpu_strategy",
    "decide",
    "fits",
    "required_bytes",
]
