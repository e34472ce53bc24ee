"""Run a module from its compressed weights, one block at a time.

A *unit* is a group of compressed parameters decoded together, just before its module runs:

* a transformer block, found from ``model._no_split_modules`` (the class names transformers and
  accelerate never split across devices) and the module tree, outermost first;
* every module outside the blocks that owns compressed parameters (embeddings, ``lm_head``, a
  pooler...) is a unit of its own; a unit is never nested in another.

Each device has ONE decode buffer, as large as its largest unit. Every compressed parameter is
replaced, once, by a view into that buffer at a fixed offset, so a unit's forward pre-hook only has
to decode: one launch per unit on the GPU (floatzip's CUDA kernel), the compiled core on the CPU. Only the unit that
runs holds valid values; the views of the others are stale until their own hook refills the buffer.
A tied parameter (``lm_head`` sharing ``embed_tokens``) is stored compressed once and decoded by each
unit that uses it.

With ``offload``, the compressed bytes stay in host memory (pinned when CUDA exists) and each unit's
bytes are copied to the device just before decoding (on CUDA: asynchronously, the next unit's copy
overlapping the current unit's compute).

Every decode goes through one custom operator (:mod:`floatzip.runtime.ops`: ``decode_into``, ``embedding_rows``,
``gemv``), so ``torch.compile(fullgraph=True)`` traces a model whole, hooks included; on the GPU the decoders launch
on the current stream with no allocation and no host sync, so CUDA-graph capture records them (offload excepted:
it refuses capture). ``fused=True`` runs the Linear layers of a GPU block by the fused decode-GEMV at up to 8 rows.

Nothing here imports transformers: the same runtime serves plain ``nn.Module`` trees.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from floatzip.decode import decompress_tensor
from floatzip.errors import BackendError, InputError, IntegrityError
from floatzip.format import spec
from floatzip.format.blob import CompressedTensor
from floatzip.format.spec import align
from floatzip.runtime import ops, strategy
from floatzip.runtime.strategy import CpuDecision

ALIGN = 256
"""Alignment, in bytes, of every parameter in a decode buffer (the CUDA backend's own default)."""

RUNTIME_ATTR = "_floatzip_runtime"

PARAM_REQUIRES_GRAD = True
"""``requires_grad`` of every float parameter the runtime installs: what a plain ``from_pretrained`` gives. With
False, ``torch.matmul`` runs a 3-D input that does not fold without a copy (transformers' ``lm_head`` on
``hidden_states[:, -1:, :]``) as a batched product over the broadcast weight: 50x slower for an 8B model's head on
the CPU (BENCHMARKS.md). Inference under ``torch.no_grad`` / ``inference_mode`` is the caller's business, as for
the plain model (``generate`` runs under no_grad)."""


def parameter(t: torch.Tensor) -> nn.Parameter:
    """``t`` as the runtime installs a parameter: requiring grad as the plain model's do (:data:`PARAM_REQUIRES_GRAD`)
    when its dtype can (floats), else not (a blob's bytes, integers)."""
    return nn.Parameter(t, requires_grad=PARAM_REQUIRES_GRAD and (t.is_floating_point() or t.is_complex()))


# ---------------------------------------------------------------------------------------------
# block discovery


def block_class_names(model: nn.Module) -> set[str]:
    """The class names of ``_no_split_modules`` declared by ``model`` or any of its submodules."""
    names: set[str] = set()
    for module in model.modules():
        declared = getattr(module, "_no_split_modules", None)
        if declared:
            names.update(str(n) for n in declared)
    return names


def find_blocks(model: nn.Module, class_names: Iterable[str] | None = None) -> list[str]:
    """Qualified names of the outermost submodules whose class is one of ``class_names``.

    ``class_names`` defaults to :func:`block_class_names`; a model that declares none has no blocks.
    """
    wanted = set(block_class_names(model) if class_names is None else class_names)
    found: list[str] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if type(child).__name__ in wanted:
                found.append(full)
            else:
                walk(full, child)

    if wanted:
        walk("", model)
    return found


def _ancestors(path: str) -> Iterable[str]:
    """``a.b.c`` -> ``a.b.c``, ``a.b``, ``a``, ``""``."""
    parts = path.split(".") if path else []
    for i in range(len(parts), -1, -1):
        yield ".".join(parts[:i])


def assign_units(param_names: Iterable[str], blocks: Sequence[str]) -> dict[str, list[str]]:
    """Group parameter names into units: ``{unit module name: [param names]}``, in first-seen order.

    A parameter belongs to the block that contains it; otherwise to its owning module, merged into
    any other such unit that contains it, so that no unit is nested in another.
    """
    block_set = set(blocks)
    owner: dict[str, str] = {}
    for name in param_names:
        module_path = name.rpartition(".")[0]
        owner[name] = next((a for a in _ancestors(module_path) if a in block_set), module_path)
    # leaf units: merge a unit into an ancestor unit
    leaf = sorted({u for u in owner.values() if u not in block_set}, key=lambda u: (u.count("."), u) if u else (-1, u))
    kept: list[str] = []
    for u in leaf:
        if not any(a in kept for a in _ancestors(u)):
            kept.append(u)
    kept_set = set(kept)
    units: dict[str, list[str]] = {}
    for name, u in owner.items():
        if u not in block_set:
            u = next(a for a in _ancestors(u) if a in kept_set)
        units.setdefault(u, []).append(name)
    return units


# ---------------------------------------------------------------------------------------------
# decoders: fill a unit's part of the buffer


class _Decoder(Protocol):
    nbytes: int  # bytes of buffer the unit's outputs occupy
    offsets: list[int]  # byte offset of each compressed tensor's output
    stored_nbytes: int  # bytes of compressed data this decoder keeps resident
    offloaded: bool

    def parts(self) -> list[tuple[int, int]]: ...

    def decode(self, buffer: torch.Tensor) -> None: ...


def _layout(cts: Sequence[CompressedTensor], base: int = 0) -> tuple[list[int], int]:
    offsets, pos = [], base
    for ct in cts:
        pos = align(pos, ALIGN)
        offsets.append(pos)
        pos += ct.original_nbytes
    return offsets, pos


def buffer_view(buffer: torch.Tensor, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The typed, shaped view of ``buffer`` (flat uint8) at byte ``offset``."""
    nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    return buffer[offset : offset + nbytes].view(dtype).view(shape)


class _CpuDecoder:
    """Decoding on the CPU (the compiled core, or the reference) from host-resident compressed tensors."""

    offloaded = False

    def __init__(self, cts: Sequence[CompressedTensor], backend: str) -> None:
        self.cts = list(cts)
        self.backend = backend
        self.offsets, self.nbytes = _layout(self.cts)
        self.stored_nbytes = sum(ct.nbytes for ct in self.cts)

    def parts(self) -> list[tuple[int, int]]:
        """(identity, bytes) of the compressed data it keeps: a tensor shared by two units counts once."""
        return [(id(ct), ct.nbytes) for ct in self.cts]

    def decode(self, buffer: torch.Tensor) -> None:
        for ct, off in zip(self.cts, self.offsets, strict=True):
            decompress_tensor(ct, out=buffer_view(buffer, off, ct.dtype, ct.shape), backend=self.backend)


class _CpuOffloadDecoder:
    """Offload on the CPU: the unit's blobs live in one (pinned when CUDA exists) host tensor and are copied
    into the device's shared staging area before each decode, which reads them from there."""

    offloaded = True

    def __init__(self, cts: Sequence[CompressedTensor], backend: str, staging: Callable[[int], torch.Tensor]) -> None:
        self.backend = backend
        self.offsets, self.nbytes = _layout(cts)
        self._spans: list[tuple[int, int]] = []
        pos = 0
        for ct in cts:
            pos = align(pos, 16)
            self._spans.append((pos, ct.nbytes))
            pos += ct.nbytes
        self.staged_nbytes = pos
        store = torch.empty(pos, dtype=torch.uint8, pin_memory=torch.cuda.is_available())
        raw = store.numpy()
        for (off, n), ct in zip(self._spans, cts, strict=True):
            raw[off : off + n] = np.frombuffer(ct.to_bytes(), dtype=np.uint8)
        self.store = store
        self.stored_nbytes = pos
        self._staging = staging
        self._staging_ptr = -1
        self._sources = list(cts)
        self._cts: list[CompressedTensor] = []

    def parts(self) -> list[tuple[int, int]]:
        return [(id(self), self.stored_nbytes)]

    def _bind(self, stage: torch.Tensor) -> None:
        """Compressed tensors whose blobs are views of the staging area (rebuilt if it moves)."""
        raw = stage.numpy()
        self._cts = [
            dataclasses.replace(ct, _blob=memoryview(raw[off : off + n].data))
            for ct, (off, n) in zip(self._sources, self._spans, strict=True)
        ]
        self._staging_ptr = stage.data_ptr()

    def decode(self, buffer: torch.Tensor) -> None:
        stage = self._staging(self.staged_nbytes)
        if stage.data_ptr() != self._staging_ptr:
            self._bind(stage)
        stage[: self.staged_nbytes].copy_(self.store)
        for ct, off in zip(self._cts, self.offsets, strict=True):
            decompress_tensor(ct, out=buffer_view(buffer, off, ct.dtype, ct.shape), backend=self.backend)


ROW_CHUNK_TILES = 64
"""Tiles decoded at a time when a row-decoded embedding is checked against its CRC at install."""


class _RowDecoder:
    """An embedding decoded by rows: its forward decodes only the tiles that hold the rows of its input ids
    (format v2 tiles are runs of consecutive elements), so it takes no room in the shared decode buffer.
    The module's ``weight`` is a stand-in of the right shape, dtype and device that holds no data."""

    offloaded = False
    nbytes = 0

    def __init__(self, ct: CompressedTensor) -> None:
        self.offsets = [0]
        self.ct = ct
        self.rows, self.cols = ct.shape
        self.tile = ct.tile_elements
        self.words = np.dtype(f"<u{ct.layout.nbytes}")
        self.stored_nbytes = ct.nbytes

    def parts(self) -> list[tuple[int, int]]:
        return [(id(self.ct), self.ct.nbytes)]

    def decode(self, buffer: torch.Tensor) -> None:
        """Nothing to decode before the forward: the rows are decoded by it."""

    def verify(self) -> None:
        """Decode every tile once, a chunk at a time, and check the CRC of the whole (no full-size buffer)."""
        from floatzip import _core
        from floatzip.decode.cpu import decode_tiles

        n_tiles = int(self.ct.v2["n_tiles"])
        crc = 0
        for first in range(0, n_tiles, ROW_CHUNK_TILES):
            count = min(ROW_CHUNK_TILES, n_tiles - first)
            elems = min(self.ct.numel, (first + count) * self.tile) - first * self.tile
            out = np.empty(elems, dtype=self.words)
            decode_tiles(self.ct, first, count, out)
            crc = _core.crc32c(out, crc)
        if crc != self.ct.data_crc32:
            raise IntegrityError("the embedding decodes to the wrong bytes (checksum mismatch)")

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """The decoded row of each of ``ids`` (flat, any order, repeats allowed), as a [len(ids), cols] tensor on
        ``ids``' device; an id out of range raises IndexError, as ``nn.Embedding`` does."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.rows):
            raise IndexError("index out of range in self")
        rows, inverse = torch.unique(ids.cpu(), sorted=True, return_inverse=True)
        return self.gather(rows)[inverse].to(ids.device)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """The decoded rows ``rows`` (sorted, unique, in range), as a [len(rows), cols] tensor."""
        from floatzip.decode.cpu import decode_tiles

        if not len(rows):
            return torch.empty(0, self.cols, dtype=self.ct.dtype)
        starts = rows.numpy().astype(np.int64) * self.cols
        first = starts // self.tile
        last = (starts + self.cols - 1) // self.tile
        tiles = np.unique(np.concatenate([np.arange(a, b + 1) for a, b in zip(first, last, strict=True)]))
        out = torch.empty(len(rows), self.cols, dtype=self.ct.dtype)
        flat = out.view(-1).view(torch.uint8).numpy().view(self.words)
        runs = np.split(tiles, np.flatnonzero(np.diff(tiles) != 1) + 1)
        for run in runs:  # consecutive tiles decoded together, then the rows they hold copied out
            t0, count = int(run[0]), len(run)
            lo, hi = t0 * self.tile, min(self.ct.numel, (t0 + count) * self.tile)
            scratch = np.empty(hi - lo, dtype=self.words)
            decode_tiles(self.ct, t0, count, scratch)
            inside = np.flatnonzero((starts >= lo) & (starts + self.cols <= hi))
            for i in inside:
                a = int(starts[i]) - lo
                flat[i * self.cols : (i + 1) * self.cols] = scratch[a : a + self.cols]
            # a row split across two runs is impossible: its tiles are consecutive and so in one run
        return out


def _row_forward(module: nn.Embedding, key: int) -> Callable[..., torch.Tensor]:
    """``module.forward`` over the decoded rows of its input ids only: ``floatzip::embedding_rows`` (one custom
    operator, so ``torch.compile`` keeps the graph whole) returns the row of each id, and the module's own forward
    runs on that table with the ids renumbered ``0..n-1`` (a pure gather, then whatever a subclass adds, such as
    Gemma's scale: bit-identical)."""
    inner = module.forward

    def forward(input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        flat = input.reshape(-1)
        table = torch.ops.floatzip.embedding_rows(flat, key)
        local = torch.arange(flat.shape[0], device=input.device).view(input.shape)
        stand_in, padding = module._parameters["weight"], module.padding_idx
        # a plain tensor, not a Parameter: Dynamo traces this swap, and cannot create Parameters in a graph
        module._parameters["weight"] = table
        module.padding_idx = None  # it changes only gradients; as a row number it would not fit the table
        try:
            return inner(local, *args, **kwargs)
        finally:
            module._parameters["weight"] = stand_in
            module.padding_idx = padding

    return forward


def _rows_apply(module: nn.Module, names: Sequence[str], cts: Sequence[CompressedTensor], backend: str,
                offload: bool) -> bool:  # fmt: skip
    """Whether a unit is an embedding whose rows can be decoded on demand (the compiled core on the CPU)."""
    return (
        isinstance(module, nn.Embedding)
        and backend == "cpu"
        and not offload
        and len(cts) == 1
        and [n.rpartition(".")[2] for n in names] == ["weight"]
        and cts[0].tiled
        and len(cts[0].shape) == 2
        and module.max_norm is None
    )


class _CudaDecoder:
    """GPU decoding with floatzip.decode.cuda: the unit's tensors are one batch, decoded by one launch per
    kernel specialisation (one, for the checkpoints floatzip writes). With ``emulated`` the same batch is
    decoded on the CPU by the kernel's own code (floatzip.decode.cuda.emulate): the tests' GPU path."""

    def __init__(self, cts: Sequence[CompressedTensor], device: torch.device, offload: bool, emulated: bool) -> None:
        from floatzip.decode import cuda

        self._cuda = cuda
        self.device = device
        self.offloaded = offload
        self.emulated = emulated
        v2 = [_as_v2(ct) for ct in cts]
        hb = cuda.host_batch(v2, out_align=ALIGN)
        self.crcs = [ct.data_crc32 for ct in v2]
        self.sizes = [ct.original_nbytes for ct in v2]
        self.names: list[str] = [f"tensor {i} of the unit" for i in range(len(v2))]
        self.offsets = list(hb.offsets)
        self.nbytes = hb.nbytes
        self.host = hb if emulated else None
        self.batch = None if emulated else cuda.to_device(hb, device, pinned_host=offload)
        self.stored_nbytes = hb.stored_nbytes
        self._prefetched: Any = None
        self._event: torch.cuda.Event | None = None

    def parts(self) -> list[tuple[int, int]]:
        return [(id(self), self.stored_nbytes)]

    def prefetch(self, stream: torch.cuda.Stream) -> None:
        """Start copying the offloaded batch to the device on ``stream``."""
        if not self.offloaded or self._prefetched is not None or self.batch is None:
            return
        with torch.cuda.stream(stream):
            self._prefetched = self.batch.to(self.device, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record(stream)

    def decode(self, buffer: torch.Tensor) -> None:
        if self.host is not None:
            errors = self._cuda.emulate(self.host, buffer.numpy())
            if errors.any():
                tile = int(np.flatnonzero(errors)[0])
                raise IntegrityError(
                    f"tensor {int(self.host.tile_tensor[tile])} of the unit: tile {tile} does not decode (corrupt data)"
                )
            return
        assert self.batch is not None
        batch = self.batch
        if self.offloaded:
            if torch.cuda.is_current_stream_capturing():
                raise BackendError(
                    "a model loaded with offload cannot be captured in a CUDA graph (torch.cuda.graph, "
                    "torch.compile(mode='reduce-overhead')): each forward copies every unit's compressed bytes to "
                    "freshly allocated device memory on a side stream; load it without offload to capture it"
                )
            current = torch.cuda.current_stream(self.device)
            if self._prefetched is not None and self._event is not None:
                current.wait_event(self._event)
                batch, self._prefetched, self._event = self._prefetched, None, None
                for t in [*batch.tensors.values(), batch.errors]:  # allocated on the copy stream, used on this one
                    t.record_stream(current)
            else:
                batch = self.batch.to(self.device, non_blocking=True)
        self._cuda.decode_batch(batch, buffer)

    def check(self) -> None:
        """Raise IntegrityError if the last decode met a corrupt stream (synchronises)."""
        if self.batch is not None and not self.offloaded:
            self.batch.check()

    def verify(self, buffer: torch.Tensor) -> None:
        """Decode once and check every tensor's bytes against its stored CRC-32C (the kernel itself checks
        only that every lane ends where its length says): run at install, before the model can use the
        weights. The decoded bytes go to the host in chunks (floatzip.decode.cuda.crc32c_of)."""
        self.decode(buffer)
        self.check()
        for i, (off, crc) in enumerate(zip(self.offsets, self.crcs, strict=True)):
            if self._cuda.crc32c_of(buffer[off : off + self.sizes[i]]) != crc:
                raise IntegrityError(f"{self.names[i]}: checksum mismatch after decoding (corrupt data)")


class _FusedDecoder:
    """A GPU unit whose compressed tensors are all Linear weights, with ``fused``: each weight is laid out for the
    fused decode-GEMV (floatzip.decode.gemv), whose arrays are also a one-tensor decode batch. An input of up to
    8 rows runs the fused product (W read compressed, never written); a larger one decodes that weight alone into
    its place in the buffer and runs the Linear's own matmul (bit-identical). Nothing is decoded before the unit
    runs. With ``emulated`` both run on the CPU by the kernels' own code (the tests' GPU path)."""

    offloaded = False

    def __init__(self, cts: Sequence[CompressedTensor], device: torch.device, emulated: bool) -> None:
        from floatzip.decode import cuda, gemv

        self._cuda, self._gemv = cuda, gemv
        self.device = device
        v2 = [_as_v2(ct) for ct in cts]
        self.offsets, self.nbytes = _layout(v2)
        self.plans = [gemv.plan(ct) for ct in v2]
        self.out_features = [ct.shape[0] for ct in v2]
        self.crcs = [ct.data_crc32 for ct in v2]
        self.sizes = [ct.original_nbytes for ct in v2]
        self.names: list[str] = [f"tensor {i} of the unit" for i in range(len(v2))]
        self.stored_nbytes = sum(p.batch.stored_nbytes + p.seg_base.nbytes + p.row_seg.nbytes for p in self.plans)
        self.products: list[Any] = []
        self.batches: list[Any] = []
        if not emulated:
            for p in self.plans:
                dg = gemv.prepare(p, device)
                hb = p.batch
                arrays = {k: dg.tensors[k] for k in cuda.ARRAYS}  # the GEMV's arrays, decoded by the decoder too
                self.products.append(dg)
                self.stored_nbytes += 4 * (dg.partials.numel() + dg.xt.numel() + dg.y.numel())  # its fp32 rooms
                self.batches.append(cuda.DeviceBatch(device, hb.dtypes, hb.shapes, hb.offsets, hb.nbytes,
                                                     hb.tile_tensor, hb.launches, arrays, dg.errors))  # fmt: skip

    def parts(self) -> list[tuple[int, int]]:
        return [(id(self), self.stored_nbytes)]

    def decode_one(self, j: int, buffer: torch.Tensor) -> None:
        """Decode weight ``j`` into its place in ``buffer`` (flat uint8)."""
        at = buffer[self.offsets[j] :]
        if not self.batches:
            errors = self._cuda.emulate(self.plans[j].batch, at.numpy())
            if errors.any():
                raise IntegrityError(f"{self.names[j]}: tile {int(np.flatnonzero(errors)[0])} does not decode")
            return
        self._cuda.decode_batch(self.batches[j], at)

    def decode(self, buffer: torch.Tensor) -> None:
        for j in range(len(self.plans)):
            self.decode_one(j, buffer)

    def product(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """``x W_j^T`` (``x``: ``[nb <= 8, in]``) in fp32, a fresh tensor."""
        if not self.products:
            y, errors = self._gemv.emulate(self.plans[j], x.float().contiguous().numpy())
            if errors.any():
                raise IntegrityError(f"{self.names[j]}: tile {int(np.flatnonzero(errors)[0])} does not decode")
            return torch.from_numpy(y.copy())
        return self._gemv.gemv(self.products[j], x).clone()  # its Y room is the weight's own: copied out

    def check(self) -> None:
        for b in self.batches:
            b.check()

    def verify(self, buffer: torch.Tensor) -> None:
        """As :meth:`_CudaDecoder.verify`: decode once, check every tensor's CRC-32C."""
        self.decode(buffer)
        self.check()
        for i, (off, crc) in enumerate(zip(self.offsets, self.crcs, strict=True)):
            if self._cuda.crc32c_of(buffer[off : off + self.sizes[i]]) != crc:
                raise IntegrityError(f"{self.names[i]}: checksum mismatch after decoding (corrupt data)")


def _fusable(model: nn.Module, names: Sequence[str], cts: Sequence[CompressedTensor]) -> bool:
    """Whether every compressed tensor of a unit is the weight of exactly one plain nn.Linear, 2-D BF16/F16."""
    if len(cts) != len(names) or not names:
        return False
    for n, ct in zip(names, cts, strict=True):
        module, attr = _slot(model, n)
        if type(module) is not nn.Linear or attr != "weight" or ct.dtype not in (torch.bfloat16, torch.float16):
            return False
        if ct.shape != (module.out_features, module.in_features):
            return False
    return True


FUSED_PLAIN_MAX_NUMEL = spec.PACK_MAX_NUMEL
"""With ``fused``, a GPU unit's compressed tensors that are not Linear weights (RMSNorm weights: an 8B Llama's have
4096 elements, which the checkpoint writer codes as blobs; Linear biases) are decoded once at install and kept
plain when each has at most this many elements, so that the unit's Linear weights can run fused."""


def _fused_unit_extras(
    model: nn.Module, names: Sequence[str], compressed: Mapping[str, CompressedTensor], chosen: str
) -> list[str]:
    """The small non-Linear-weight tensors of a would-be fused GPU unit (see :data:`FUSED_PLAIN_MAX_NUMEL`), or []
    when the unit is not a GPU one or has other tensors that keep it from fusing."""
    if chosen not in ("cuda", "emulated"):
        return []
    weights = [n for n in names if type(_slot(model, n)[0]) is nn.Linear and n.rpartition(".")[2] == "weight"]
    extras = [n for n in names if n not in weights]
    if not extras or not _fusable(model, weights, [compressed[n] for n in weights]):
        return []
    if any(compressed[n].numel > FUSED_PLAIN_MAX_NUMEL for n in extras):
        return []
    if {id(compressed[n]) for n in weights} & {id(compressed[n]) for n in extras}:
        return []  # a tensor tied to a Linear weight: not small, and not to be split
    return extras


def _decode_plain(
    model: nn.Module,
    compressed: Mapping[str, CompressedTensor],
    device: torch.device,
    backends: Mapping[str, str] | None = None,
) -> set[str]:
    """Decode each of ``compressed`` on ``device`` (by ``backends[name]``, default the device's own; CRC checked)
    into a plain parameter of its own; tied names share one. Returns the names."""
    params: dict[int, nn.Parameter] = {}
    for name, ct in compressed.items():
        module, attr = _slot(model, name)
        if id(ct) not in params:
            backend = backends[name] if backends is not None else "auto"
            params[id(ct)] = parameter(decompress_tensor(ct, device=device, backend=backend))
        module._parameters[attr] = params[id(ct)]
    return set(compressed)


def _fused_forward(
    module: nn.Linear, buffer: torch.Tensor, decode_key: int, gemv_key: int
) -> Callable[..., torch.Tensor]:
    """``module.forward`` for a fused unit: up to 8 rows through ``floatzip::gemv`` (fp32 product, plus the bias in
    fp32, rounded once to the input's dtype); more through its own decode and the Linear's matmul."""
    from floatzip.decode.gemv import MAX_BATCH

    inner = module.forward

    def forward(input: torch.Tensor) -> torch.Tensor:
        rows = input.numel() // input.shape[-1] if input.shape[-1] else 0
        if 1 <= rows <= MAX_BATCH:
            y = torch.ops.floatzip.gemv(input.reshape(rows, input.shape[-1]), gemv_key)
            if module.bias is not None:
                y = y + module.bias.float()
            return y.to(input.dtype).view(*input.shape[:-1], y.shape[-1])
        torch.ops.floatzip.decode_into(buffer, decode_key)
        return inner(input)

    return forward


def _as_v2(ct: CompressedTensor) -> CompressedTensor:
    """A format v2 record of ``ct`` (a v1 record is decoded on the CPU and coded again, once, at load)."""
    if ct.tiled:
        return ct
    from floatzip.codec.encode import compress_words

    words = np.empty(ct.numel, dtype=np.dtype(f"<u{ct.layout.nbytes}"))
    from floatzip.decode import decode_words

    decode_words(ct, words)
    return compress_words(words, ct.layout, ct.shape)


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "cuda" if device.type == "cuda" else "cpu"
    if backend not in ("cpu", "reference", "cuda", "emulated"):
        raise BackendError(f"unknown decode backend {backend!r}; known: auto, cpu, reference, cuda, emulated")
    if backend == "cuda" and device.type != "cuda":
        raise BackendError(f"the cuda decode backend decodes into CUDA memory, not {device}")
    if backend != "cuda" and device.type != "cpu":
        raise BackendError(f"the {backend} decode backend decodes into CPU memory, not {device}")
    return backend


# ---------------------------------------------------------------------------------------------
# the runtime


@dataclass
class Unit:
    """One group of compressed parameters decoded together before ``module`` runs."""

    name: str
    module: nn.Module
    device: torch.device
    params: list[str]  # qualified names of the parameter slots it fills
    decoder: Any
    handle: RemovableHandle | None = None
    calls: int = 0  # decodes run (row lookups, for an embedding decoded by rows)
    key: int = 0  # its key in floatzip.runtime.ops (torch.ops.floatzip.decode_into / embedding_rows)

    @property
    def nbytes(self) -> int:
        return int(self.decoder.nbytes)


@dataclass(frozen=True)
class MemoryReport:
    """Where a floatzip model's weight bytes are, and which ``cpu_strategy`` is in force (``cpu``: what was asked,
    what is in force, and for ``"auto"`` the figures it compared).

    ``resident_bytes`` (on the devices) = ``compressed_bytes`` (unless offloaded) + ``buffer_bytes``
    + ``staging_bytes`` + ``once_bytes`` + ``plain_bytes``; offloaded compressed bytes are in ``host_bytes``.
    ``once_bytes`` are the weights decoded at load (``cpu_strategy="once"``), held as plain tensors.
    ``uncompressed_bytes`` is what the same weights take fully decoded (``decoded_bytes`` + ``once_bytes`` +
    ``plain_bytes``).
    """

    compressed_bytes: int
    host_bytes: int
    buffer_bytes: int
    staging_bytes: int
    plain_bytes: int
    decoded_bytes: int
    units: int
    largest_unit_bytes: int
    per_device: dict[str, int] = field(default_factory=dict)
    row_units: int = 0  # embeddings decoded by rows (they take no room in the buffer)
    once_bytes: int = 0
    once_tensors: int = 0
    cpu: CpuDecision = field(default_factory=lambda: CpuDecision("per_unit", "auto", "not decided"))

    @property
    def strategy(self) -> str:
        """The ``cpu_strategy`` in force: ``"once"`` or ``"per_unit"``."""
        return self.cpu.strategy

    @property
    def resident_bytes(self) -> int:
        return self.compressed_bytes + self.buffer_bytes + self.staging_bytes + self.once_bytes + self.plain_bytes

    @property
    def uncompressed_bytes(self) -> int:
        return self.decoded_bytes + self.once_bytes + self.plain_bytes

    @property
    def ratio(self) -> float:
        """Resident weight memory over the uncompressed model's."""
        return self.resident_bytes / self.uncompressed_bytes if self.uncompressed_bytes else 1.0

    def __str__(self) -> str:
        return self.format()

    def format(self) -> str:
        """An aligned table: a row per kind of weight bytes (MiB), the ratio, then the strategy and why."""
        mib = 1 << 20
        rows: list[tuple[str, str]] = [
            ("compressed weights (resident)", f"{self.compressed_bytes / mib:.3f}"),
            ("compressed weights (offloaded to host)", f"{self.host_bytes / mib:.3f}"),
            ("decode buffers", f"{self.buffer_bytes / mib:.3f}"),
            ("offload staging", f"{self.staging_bytes / mib:.3f}"),
            ("weights decoded once at load", f"{self.once_bytes / mib:.3f}"),
            ("plain weights (norms, biases, small)", f"{self.plain_bytes / mib:.3f}"),
            ("resident total", f"{self.resident_bytes / mib:.3f}"),
            ("uncompressed model", f"{self.uncompressed_bytes / mib:.3f}"),
            ("resident / uncompressed (%)", f"{100 * self.ratio:.2f}"),
            ("units", f"{self.units}"),
        ]
        if len(self.per_device) > 1:
            rows += [(f"resident on {d}", f"{n / mib:.3f}") for d, n in sorted(self.per_device.items())]
        width = max(len(k) for k, _ in rows)
        values = max(10, *(len(v) for _, v in rows))
        lines = [f"  {'weights':<{width}}  {'MiB':>{values}}"]
        lines += [f"  {k:<{width}}  {v:>{values}}" for k, v in rows]
        how: list[str] = []
        if self.once_tensors:
            how.append(f"{self.once_tensors} tensor(s) decoded at load into plain parameters, compressed bytes dropped")
        if self.units:
            each = f"each unit decoded just before it runs into one buffer of {self.largest_unit_bytes / mib:.3f} MiB"
            if self.row_units:
                each += f"; {self.row_units} embedding(s) decoded only in the rows looked up"
            how.append(each)
        asked = "" if self.cpu.asked == self.cpu.strategy else f" (asked: {self.cpu.asked})"
        text = [("cpu_strategy", f"{self.cpu.strategy}{asked}"), ("why", self.cpu.reason)]
        text += [("how", h) for h in how]
        lines += [f"  {k:<{width}}  {v}" for k, v in text]
        return "\n".join(lines)


class FloatzipRuntime:
    """The hooks, buffers and decoders installed on a module by :func:`install`."""

    def __init__(self, backend: str, offload: bool) -> None:
        self.backend = backend
        self.offload = offload
        self.units: list[Unit] = []
        self.buffers: dict[torch.device, torch.Tensor] = {}
        self.staging: dict[torch.device, torch.Tensor] = {}
        self.shapes: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}  # param name -> decoded dtype, shape
        self.slots: dict[str, tuple[Unit, int]] = {}  # param name -> (unit, index of its tensor in the unit)
        self._copy_streams: dict[torch.device, Any] = {}
        self._views: dict[torch.device, torch.Tensor] = {}  # each buffer as the hooks pass it (see _typed)
        self._keys: list[tuple[int, str]] = []  # (key in floatzip.runtime.ops, "decode" / "rows" / "gemv")
        self._forwards: list[nn.Module] = []  # modules given an instance forward (fused Linears)
        self.fused: dict[str, tuple[int, int]] = {}  # fused Linear weight name -> (decode key, floatzip::gemv key)
        self.cpu = CpuDecision("per_unit", "auto", "not decided yet")  # the cpu_strategy in force (install sets it)
        self.once: set[str] = set()  # parameters decoded at load (cpu_strategy "once"): plain, no unit
        weakref.finalize(self, _unregister, self._keys)

    # -- buffers -------------------------------------------------------------------------
    def _staging_for(self, device: torch.device) -> Callable[[int], torch.Tensor]:
        def get(nbytes: int) -> torch.Tensor:
            stage = self.staging.get(device)
            if stage is None or stage.numel() < nbytes:
                stage = torch.empty(nbytes, dtype=torch.uint8, device=device)
                self.staging[device] = stage
            return stage

        return get

    # -- hooks ---------------------------------------------------------------------------
    def _hook(self, unit: Unit) -> Callable[..., None]:
        """The unit's forward pre-hook: one ``torch.ops.floatzip.decode_into`` (a custom operator: Dynamo traces
        the hook and keeps the decode as one node, so a ``fullgraph`` compile holds)."""
        buffer, key = self._views[unit.device], unit.key

        def pre_forward(module: nn.Module, args: Any) -> None:
            torch.ops.floatzip.decode_into(buffer, key)

        return pre_forward

    def _register(self, index: int) -> None:
        """Register unit ``index``'s decode (or row lookup) with floatzip.runtime.ops. The registry is global:
        what it holds refers to this runtime weakly, and the keys are dropped when the runtime goes."""
        ref = weakref.ref(self)
        unit = self.units[index]

        def gone() -> FloatzipRuntime:
            rt = ref()
            if rt is None:
                raise InputError("the model this floatzip decoder belonged to is gone")
            return rt

        if isinstance(unit.decoder, _RowDecoder):
            ct = unit.decoder.ct
            unit.key = ops.register_rows(lambda ids: gone()._lookup(index, ids), ct.shape[1], ct.dtype)
        else:
            unit.key = ops.register(lambda buffer: gone()._decode(index, buffer.view(torch.uint8)))
        self._keys.append((unit.key, "rows" if isinstance(unit.decoder, _RowDecoder) else "decode"))

    def _lookup(self, index: int, ids: torch.Tensor) -> torch.Tensor:
        unit = self.units[index]
        unit.calls += 1
        decoder: _RowDecoder = unit.decoder
        return decoder.lookup(ids)

    def _decode(self, index: int, buffer: torch.Tensor) -> None:
        unit = self.units[index]
        unit.calls += 1
        unit.decoder.decode(buffer)
        if unit.device.type == "cuda" and unit.decoder.offloaded:
            nxt = self._next_on(unit.device, index)
            if nxt is not None:
                stream = self._copy_streams.setdefault(unit.device, torch.cuda.Stream(unit.device))
                nxt.decoder.prefetch(stream)

    def _register_fused(self, index: int, model: nn.Module) -> None:
        """Give each Linear of fused unit ``index`` its own decode (for inputs of more than 8 rows) and its fused
        product (for up to 8), both as floatzip.runtime.ops keys, and the forward that picks one."""
        ref = weakref.ref(self)
        unit = self.units[index]
        decoder: _FusedDecoder = unit.decoder

        def rt() -> FloatzipRuntime:
            got = ref()
            if got is None:
                raise InputError("the model this floatzip decoder belonged to is gone")
            return got

        def decode(j: int) -> Callable[[torch.Tensor], None]:
            return lambda buffer: rt()._decode_one(index, j, buffer.view(torch.uint8))

        def product(j: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda x: rt()._product(index, j, x)

        for name in unit.params:
            j = self.slots[name][1]
            module, _ = _slot(model, name)
            decode_key = ops.register(decode(j))
            gemv_key = ops.register_gemv(product(j), decoder.out_features[j])
            self._keys += [(decode_key, "decode"), (gemv_key, "gemv")]
            self.fused[name] = (decode_key, gemv_key)
            assert isinstance(module, nn.Linear)
            module.__dict__["forward"] = _fused_forward(module, self._views[unit.device], decode_key, gemv_key)
            self._forwards.append(module)

    def _decode_one(self, index: int, j: int, buffer: torch.Tensor) -> None:
        unit = self.units[index]
        unit.calls += 1
        unit.decoder.decode_one(j, buffer)

    def _product(self, index: int, j: int, x: torch.Tensor) -> torch.Tensor:
        unit = self.units[index]
        unit.calls += 1
        out: torch.Tensor = unit.decoder.product(j, x)
        return out

    def _next_on(self, device: torch.device, index: int) -> Unit | None:
        for unit in self.units[index + 1 :] + self.units[:index]:
            if unit.device == device:
                return unit
        return None

    # -- queries -------------------------------------------------------------------------
    def decode_unit(self, unit: Unit) -> dict[str, torch.Tensor]:
        """Decode ``unit`` into its buffer now; its parameters' views, by name (a row-decoded embedding,
        which has no place in the buffer: a fresh tensor)."""
        if isinstance(unit.decoder, _RowDecoder):
            return {name: decompress_tensor(unit.decoder.ct).to(unit.device) for name in unit.params}
        unit.decoder.decode(self.buffers[unit.device])
        out = {}
        for name in unit.params:
            _, i = self.slots[name]
            dtype, shape = self.shapes[name]
            out[name] = buffer_view(self.buffers[unit.device], unit.decoder.offsets[i], dtype, shape)
        return out

    def decoded_tensors(self, device: torch.device | str | None = "cpu") -> dict[str, torch.Tensor]:
        """A fresh decoded copy of every compressed parameter, by name; tied names share one tensor."""
        out: dict[str, torch.Tensor] = {}
        for unit in self.units:
            views = self.decode_unit(unit)
            seen: dict[tuple[int, int], torch.Tensor] = {}
            for name, view in views.items():
                key = (view.data_ptr(), view.numel())
                if key not in seen:
                    seen[key] = view.to(device, copy=True) if device is not None else view.clone()
                out[name] = seen[key]
        # tied across units: the same compressed tensor decoded by two units -> one tensor
        by_source: dict[int, torch.Tensor] = {}
        for name in self.slots:
            src = id(self._sources[name])
            if src in by_source:
                out[name] = by_source[src]
            else:
                by_source[src] = out[name]
        return out

    def is_view(self, t: torch.Tensor) -> bool:
        """True when ``t`` lives in one of the decode buffers."""
        ptr = t.untyped_storage().data_ptr()
        return any(b.untyped_storage().data_ptr() == ptr for b in self.buffers.values())

    def memory(self, model: nn.Module) -> MemoryReport:
        resident: dict[int, tuple[str, int]] = {}
        host: dict[int, int] = {}
        for unit in self.units:
            for key, nbytes in unit.decoder.parts():
                if unit.decoder.offloaded:
                    host[key] = nbytes
                else:
                    resident[key] = (str(unit.device), nbytes)
        per_device: dict[str, int] = {}
        for dev, nbytes in resident.values():
            per_device[dev] = per_device.get(dev, 0) + nbytes
        for d, b in [*self.buffers.items(), *self.staging.items()]:
            per_device[str(d)] = per_device.get(str(d), 0) + b.numel()
        plain = once = 0
        seen: set[int] = set()
        decoded_once = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n in self.once}
        for t in [*model.parameters(), *model.buffers()]:
            ptr = t.untyped_storage().data_ptr()
            if t.device.type == "meta" or self.is_view(t) or ptr in seen:
                continue
            seen.add(ptr)
            if id(t) in decoded_once:
                once += t.untyped_storage().nbytes()
            else:
                plain += t.untyped_storage().nbytes()
            per_device[str(t.device)] = per_device.get(str(t.device), 0) + t.untyped_storage().nbytes()
        sources = {id(ct): ct.original_nbytes for ct in self._sources.values()}
        return MemoryReport(
            compressed_bytes=sum(n for _, n in resident.values()),
            host_bytes=sum(host.values()),
            buffer_bytes=sum(b.numel() for b in self.buffers.values()),
            staging_bytes=sum(b.numel() for b in self.staging.values()),
            plain_bytes=plain,
            decoded_bytes=sum(sources.values()),
            units=len(self.units),
            largest_unit_bytes=max((u.nbytes for u in self.units), default=0),
            row_units=sum(isinstance(u.decoder, _RowDecoder) for u in self.units),
            per_device=per_device,
            once_bytes=once,
            once_tensors=len(decoded_once),
            cpu=self.cpu,
        )

    # -- teardown ------------------------------------------------------------------------
    def materialize(self, model: nn.Module) -> None:
        """Replace every view by its own decoded tensor and remove the hooks (the model runs plainly)."""
        decoded = self.decoded_tensors(device=None)
        for unit in self.units:
            if unit.handle is not None:
                unit.handle.remove()
            unit.module.__dict__.pop("forward", None)  # a row-decoded embedding's own forward, back
        for module in self._forwards:
            module.__dict__.pop("forward", None)  # a fused Linear's own forward, back
        self._forwards.clear()
        self.fused.clear()
        model.__dict__.pop("_apply", None)  # moves and casts allowed again
        tied: dict[int, nn.Parameter] = {}
        for name, t in decoded.items():
            module, attr = _slot(model, name)
            p = tied.setdefault(id(t), parameter(t))
            module._parameters[attr] = p
        _unregister(self._keys)
        self.units.clear()
        self.buffers.clear()
        self.staging.clear()
        if getattr(model, RUNTIME_ATTR, None) is self:
            delattr(model, RUNTIME_ATTR)

    _sources: dict[str, CompressedTensor]


def _typed(buffer: torch.Tensor, dtypes: set[torch.dtype]) -> torch.Tensor:
    """``buffer`` viewed as its parameters' dtype when they share one (else as it is, uint8).

    Under torch.compile the parameters (views of the buffer) are graph inputs aliasing the buffer the decode
    operator mutates; AOTAutograd follows such a mutation into the views (its "synthetic base") only when they
    all have one dtype, and refuses a uint8 buffer under BF16 views. The decoders still write bytes."""
    return buffer.view(dtypes.pop()) if len(dtypes) == 1 else buffer


def _unregister(keys: list[tuple[int, str]]) -> None:
    drop = {"decode": ops.unregister, "rows": ops.unregister_rows, "gemv": ops.unregister_gemv}
    for key, kind in keys:
        drop[kind](key)
    keys.clear()


def _slot(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_path, _, attr = name.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    if attr not in module._parameters:
        raise InputError(f"{name!r} is not a parameter of the model")
    return module, attr


def install(
    model: nn.Module,
    compressed: Mapping[str, CompressedTensor],
    *,
    devices: Mapping[str, torch.device] | None = None,
    device: torch.device | str | None = None,
    backend: str = "auto",
    offload: bool = False,
    blocks: Sequence[str] | None = None,
    fused: bool = False,
    cpu_strategy: str = "auto",
    available_bytes: int | None = None,
) -> FloatzipRuntime:
    """Make ``model`` run from ``compressed`` (qualified parameter name -> compressed tensor).

    Each named parameter slot is replaced by a view into its device's decode buffer, filled by a
    forward pre-hook on the slot's unit. Tied names may map to the same compressed tensor.
    ``devices`` gives each parameter's device (default: where the slot's current tensor is, the CPU
    for meta tensors); ``device`` overrides it for every unit and also moves every other parameter and
    buffer there. ``blocks`` overrides the discovered block names (:func:`find_blocks`).

    ``fused`` (opt-in; GPU units, not offloaded): a unit whose compressed tensors are plain ``nn.Linear`` weights
    (its other compressed tensors, if small, decoded once now: :data:`FUSED_PLAIN_MAX_NUMEL`) runs each Linear
    by the fused decode-GEMV when its input has at most 8 rows (not bit-identical to the BF16 model: another fp32
    summation order, docs/KERNELS.md), and by its own decode and the same matmul otherwise (bit-identical); other
    units run as without it.

    ``cpu_strategy`` (:mod:`floatzip.runtime.strategy`) picks how the weights decoded by a CPU backend are held:
    ``"once"`` decodes them all now into plain parameters (checked against their CRCs; their compressed bytes are
    not kept), ``"per_unit"`` keeps them compressed and decodes each unit just before it runs, ``"auto"`` decodes
    once when the decoded weights fit the available memory with a clear margin. ``available_bytes`` replaces the
    figure ``"auto"`` reads from the system (``strategy.available_memory``).
    """
    strategy.check_cpu_strategy(cpu_strategy)
    if getattr(model, RUNTIME_ATTR, None) is not None:
        raise InputError("floatzip's runtime is already installed on this model")
    target = torch.device(device) if device is not None else None
    if target is not None and target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    rt = FloatzipRuntime(backend, offload)
    block_names = list(find_blocks(model) if blocks is None else blocks)
    compressed = _decode_outside_units(model, compressed, block_names, target, devices)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}

    def device_of(name: str) -> torch.device:
        if target is not None:
            return target
        if devices is not None and name in devices:
            return torch.device(devices[name])
        module, attr = _slot(model, name)
        current = module._parameters[attr]
        return current.device if current is not None and current.device.type != "meta" else torch.device("cpu")

    # the weights a CPU backend decodes (not the GPU's, nor the emulated GPU path's): decoded now, or per unit
    on_cpu = {n: b for n in compressed if (b := _pick_backend(backend, device_of(n))) in ("cpu", "reference")}
    needed = sum({id(compressed[n]): compressed[n].original_nbytes for n in on_cpu}.values())
    rt.cpu = strategy.decide(cpu_strategy, needed, offload=offload, available=available_bytes)
    if rt.cpu.strategy == "once":
        # by the CPU units' own decoder function and backend (decompress_tensor), CRCs checked
        rt.once = _decode_plain(model, {n: compressed[n] for n in on_cpu}, torch.device("cpu"), on_cpu)
        compressed = {n: ct for n, ct in compressed.items() if n not in on_cpu}  # nothing keeps their blobs
    rt._sources = dict(compressed)

    # an embedding decoded by rows is a unit of its own, even inside a block (BERT's embeddings block)
    by_rows = [
        n.rpartition(".")[0]
        for n, ct in compressed.items()
        if n.rpartition(".")[2] == "weight"
        and _rows_apply(_slot(model, n)[0], [n], [ct], _pick_backend(backend, device_of(n)), offload)
    ]
    grouped = dict(sorted(assign_units(compressed, [*block_names, *by_rows]).items(),
                          key=lambda kv: order.get(kv[0], len(order))))  # fmt: skip
    if fused and not offload:
        for unit_name, names in grouped.items():
            plain = _fused_unit_extras(model, names, compressed, _pick_backend(backend, device_of(names[0])))
            if plain:  # decoded once, now: the unit's Linear weights can then run fused
                _decode_plain(model, {n: compressed[n] for n in plain}, device_of(names[0]))
                grouped[unit_name] = [n for n in names if n not in plain]
                rt._sources = {n: ct for n, ct in rt._sources.items() if n not in plain}

    shared: dict[tuple[torch.device, str, tuple[int, ...]], Any] = {}
    for unit_name, names in grouped.items():
        unit_devices = {device_of(n) for n in names}
        if len(unit_devices) > 1:
            raise InputError(f"unit {unit_name!r} has weights on several devices: {sorted(map(str, unit_devices))}")
        dev = unit_devices.pop()
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        chosen = _pick_backend(backend, dev)
        # one compressed tensor per source object: a tied pair inside one unit is decoded once
        cts: list[CompressedTensor] = []
        index: dict[int, int] = {}
        for n in names:
            ct = compressed[n]
            if id(ct) not in index:
                index[id(ct)] = len(cts)
                cts.append(ct)
        decoder: Any = shared.get((dev, chosen, tuple(id(ct) for ct in cts)))
        module = model.get_submodule(unit_name) if unit_name else model
        if _rows_apply(module, names, cts, chosen, offload):
            decoder = _RowDecoder(cts[0])  # not shared: a tied lm_head needs the whole matrix, in the buffer
        elif fused and not offload and chosen in ("cuda", "emulated") and _fusable(model, names, cts):
            decoder = _FusedDecoder(cts, dev, emulated=chosen == "emulated")
        elif decoder is not None and not isinstance(decoder, _RowDecoder):
            pass  # a unit decoding exactly the same tensors (a tied lm_head): share its compressed copy
        elif chosen in ("cuda", "emulated"):
            decoder = _CudaDecoder(cts, dev, offload, emulated=chosen == "emulated")
        elif offload:
            decoder = _CpuOffloadDecoder(cts, chosen, rt._staging_for(dev))
        else:
            decoder = _CpuDecoder(cts, chosen)
        if not isinstance(decoder, _RowDecoder | _FusedDecoder):
            shared[(dev, chosen, tuple(id(ct) for ct in cts))] = decoder
        unit = Unit(unit_name, module, dev, list(names), decoder)
        for n in names:
            rt.slots[n] = (unit, index[id(compressed[n])])
            rt.shapes[n] = (compressed[n].dtype, compressed[n].shape)
        rt.units.append(unit)

    for unit in rt.units:
        size = rt.buffers.get(unit.device)
        need = max(unit.nbytes, 1)
        if size is None or size.numel() < need:
            rt.buffers[unit.device] = torch.empty(align(need, 16), dtype=torch.uint8, device=unit.device)
    for dev, buf in rt.buffers.items():
        # the one buffer every decode writes never moves: telling Dynamo lets torch.compile(mode="reduce-overhead")
        # keep a graph that mutates it under CUDA-graph replay instead of skipping cudagraphs for a mutated input
        rt._views[dev] = _typed(buf, {rt.shapes[n][0] for u in rt.units if u.device == dev for n in u.params})
        torch._dynamo.mark_static_address(rt._views[dev])  # what the hooks pass (a view is not marked with its base)

    checked: set[int] = set()
    for unit in rt.units:  # the GPU kernel checks lane lengths, not data CRCs: each GPU unit is checked once, now
        if isinstance(unit.decoder, _CudaDecoder | _FusedDecoder) and id(unit.decoder) not in checked:
            checked.add(id(unit.decoder))
            for n in unit.params:
                unit.decoder.names[rt.slots[n][1]] = f"tensor {n!r}"
            unit.decoder.verify(rt.buffers[unit.device])

    for unit in rt.units:  # allocated now, so that the memory report is right before the first forward
        if isinstance(unit.decoder, _CpuOffloadDecoder):
            rt._staging_for(unit.device)(unit.decoder.staged_nbytes)

    for i, unit in enumerate(rt.units):
        buf = rt.buffers[unit.device]
        if isinstance(unit.decoder, _RowDecoder):
            unit.decoder.verify()  # the whole embedding's CRC, once: its forward decodes only rows
            (n,) = unit.params
            module, attr = _slot(model, n)
            dtype, shape = rt.shapes[n]
            stand_in = torch.zeros(1, dtype=dtype, device=unit.device).expand(shape)  # no data, the right face
            module._parameters[attr] = parameter(stand_in)
            assert isinstance(module, nn.Embedding)
            rt._register(i)
            module.__dict__["forward"] = _row_forward(module, unit.key)  # an instance attribute, as in materialize
            continue
        for n in unit.params:
            module, attr = _slot(model, n)
            dtype, shape = rt.shapes[n]
            view = buffer_view(buf, unit.decoder.offsets[rt.slots[n][1]], dtype, shape)
            module._parameters[attr] = parameter(view)
        if isinstance(unit.decoder, _FusedDecoder):
            rt._register_fused(i, model)  # no pre-hook: each Linear decodes (or multiplies) its own weight
            continue
        rt._register(i)
        unit.handle = unit.module.register_forward_pre_hook(rt._hook(unit))

    if target is not None:
        _move_rest(model, rt, target)
    setattr(model, RUNTIME_ATTR, rt)
    if rt.units:
        _guard_moves(model, rt)
    return rt


def _guard_moves(model: nn.Module, rt: FloatzipRuntime) -> None:
    """Refuse ``model.to(...)``, ``.cuda()``, ``.half()``... that would move or cast the weights: each
    parameter would become a copy cut off from the decode buffer its unit fills, and the model would run
    on stale weights without a word. Every such call goes through ``_apply``, whose function is tried on
    a probe tensor of each unit device first."""
    inner = model._apply

    def _apply(fn: Callable[[torch.Tensor], torch.Tensor], *args: Any, **kwargs: Any) -> nn.Module:
        for device in {u.device for u in rt.units}:
            probe = torch.zeros(1, dtype=torch.bfloat16, device=device)
            out = fn(probe)
            if isinstance(out, torch.Tensor) and (out.device != probe.device or out.dtype != probe.dtype):
                raise InputError(
                    f"a model running from floatzip weights cannot be moved or cast (to {out.device}, {out.dtype}): "
                    "load it where it should run (from_pretrained(..., device_map=...), and dtype=)"
                )
        return inner(fn, *args, **kwargs)

    model.__dict__["_apply"] = _apply


def _move_rest(model: nn.Module, rt: FloatzipRuntime, device: torch.device) -> None:
    """Move every parameter and buffer that is not a decode-buffer view to ``device``."""
    for module in model.modules():
        for attr, p in list(module._parameters.items()):
            if p is not None and not rt.is_view(p) and p.device != device:
                module._parameters[attr] = nn.Parameter(p.data.to(device), requires_grad=p.requires_grad)
        for attr, b in list(module._buffers.items()):
            if b is not None and b.device != device:
                module._buffers[attr] = b.to(device)


def _holds_blocks(module_path: str, block_names: Sequence[str]) -> bool:
    """Whether the module ``module_path`` strictly contains one of the blocks."""
    return any(b.startswith(f"{module_path}.") for b in block_names) if module_path else bool(block_names)


def _decode_outside_units(
    model: nn.Module,
    compressed: Mapping[str, CompressedTensor],
    block_names: Sequence[str],
    target: torch.device | None,
    devices: Mapping[str, torch.device] | None,
) -> dict[str, CompressedTensor]:
    """Decode, once and for good, the parameters that a module holding blocks owns itself (a diffusion
    transformer's ``scale_shift_table``, used by its forward after the blocks have run): as a unit it would
    be decoded before its blocks, which then reuse the buffer under it. The rest, still compressed."""
    kept: dict[str, CompressedTensor] = {}
    decoded: dict[int, torch.Tensor] = {}
    for name, ct in compressed.items():
        module, attr = _slot(model, name)
        if not _holds_blocks(name.rpartition(".")[0], block_names):
            kept[name] = ct
            continue
        current = module._parameters[attr]
        device = target or (torch.device(devices[name]) if devices is not None and name in devices else None)
        if device is None:
            device = current.device if current is not None and current.device.type != "meta" else torch.device("cpu")
        if id(ct) not in decoded:
            decoded[id(ct)] = decompress_tensor(ct).to(device)
        module._parameters[attr] = parameter(decoded[id(ct)])
    return kept


def runtime_of(model: nn.Module) -> FloatzipRuntime | None:
    """The runtime installed on ``model``, if any."""
    rt = getattr(model, RUNTIME_ATTR, None)
    return rt if isinstance(rt, FloatzipRuntime) else None


def memory_report(model: nn.Module) -> MemoryReport:
    """Where ``model``'s weight bytes are (compressed, buffers, plain); see :class:`MemoryReport`."""
    rt = runtime_of(model)
    if rt is None:
        raise InputError("the model does not run from floatzip-compressed weights")
    return rt.memory(model)


__all__ = [
    "ALIGN",
    "FloatzipRuntime",
    "MemoryReport",
    "Unit",
    "assign_units",
    "block_class_names",
    "buffer_view",
    "find_blocks",
    "install",
    "memory_report",
    "runtime_of",
]
