"""floatzip in vLLM: serve a floatzip checkpoint with its weights compressed in device memory.

vLLM finds this module through floatzip's ``vllm.general_plugins`` entry point: :func:`register` runs in
every vLLM process (the engine and each tensor-parallel worker) before it builds a model, and registers

* the quantization method ``floatzip`` (:class:`FloatzipVllmConfig`), which vLLM picks from the checkpoint's
  ``config.json`` (``quantization_config.quant_method``). Its linear method serves every ``LinearBase``
  (column-, row-parallel, merged, QKV, replicated) and its embedding method ``VocabParallelEmbedding`` and
  ``ParallelLMHead``;
* the load format ``floatzip`` (:class:`FloatzipModelLoader`), also installed as ``auto`` (vLLM's default):
  for a floatzip checkpoint it decodes each stored blob, checked against its CRC-32C, as the weight stream
  passes, and checks every plain tensor against the file's checksum map. Any other checkpoint passes
  through untouched.

How a rank gets its shard without holding the model decoded: the stream decodes one checkpoint tensor
at a time. A layer that holds it whole (tensor parallel 1: an ``o_proj``, or the ``q`` part of a QKV layer)
keeps the tensor's stored code as it is, and a merged layer's parts decode one after the other into its
rows. Otherwise vLLM's own weight loaders cut the shard (rows for column-parallel and merged layers, columns
for row-parallel ones, vocabulary rows, replicated KV heads...) into a host staging tensor of the shard's
shape, and once the layer's last part has arrived the shard is coded again (floatzip's encoder), only the
code goes to the device and the staging tensor is freed. So host memory holds a few tensors at a time,
device memory the compressed shards plus one decode buffer per device, as large as the largest layer; a
shard needs no format support, at the price of coding it once at load (BENCHMARKS.md, "vLLM plugin"). With
pipeline parallel, the tensors of other stages pass undecoded.

``apply`` decodes the layer into that buffer and runs the matmul vLLM runs for an unquantized layer, so
outputs are bit-identical to vLLM's BF16 model. A layer's ``weight`` parameter keeps its shape, dtype and
device but holds no data (a zero-stride stand-in): code that reads weights outside a forward sees zeros.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import weakref
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import Parameter
from vllm.model_executor.layers.linear import (
    LinearBase,
    LinearMethodBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
)
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig, QuantizeMethodBase
from vllm.model_executor.layers.utils import default_unquantized_gemm, dispatch_unquantized_gemm
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.model_loader import DefaultModelLoader, get_model_loader, register_model_loader
from vllm.model_executor.utils import set_weight_attrs

from floatzip import _core
from floatzip.codec.encode import compress_tensor
from floatzip.decode import decompress_tensor
from floatzip.errors import FormatError, InputError, IntegrityError
from floatzip.format import spec
from floatzip.format.blob import CompressedTensor
from floatzip.format.checkpoint import CompressedFile, member_tensors, open_compressed
from floatzip.format.safetensors_io import Entry, read_header
from floatzip.format.spec import align
from floatzip.runtime import blocks, ops
from floatzip.runtime.loading import checked_format_version, is_blob

logger = logging.getLogger(__name__)

RECORD_ATTR = "_floatzip_record"
"""Attribute of a tensor the weight stream decoded: its floatzip record, which a layer that holds the tensor
whole keeps as it is instead of coding it again."""

LOAD_FORMAT = spec.QUANT_METHOD
"""The vLLM load format floatzip registers (``--load-format floatzip``); ``auto`` does the same."""


# ---------------------------------------------------------------------------------------------
# the decode buffer of each device


class _DeviceBuffer:
    """One device's decode buffer; layers hold this holder, so that growing the buffer reaches them all."""

    def __init__(self) -> None:
        self.tensor: torch.Tensor | None = None


class _Workspace:
    """One flat byte buffer per device, as large as the largest layer decoded into it. Sized while the
    model loads (before vLLM profiles memory, compiles or captures graphs), never reallocated by a forward."""

    def __init__(self) -> None:
        self._buffers: dict[torch.device, _DeviceBuffer] = {}
        self._lock = threading.Lock()

    def reserve(self, device: torch.device, nbytes: int) -> _DeviceBuffer:
        with self._lock:
            holder = self._buffers.setdefault(device, _DeviceBuffer())
            if holder.tensor is None or holder.tensor.numel() < nbytes:
                holder.tensor = torch.empty(align(nbytes, blocks.ALIGN), dtype=torch.uint8, device=device)
            return holder


WORKSPACE = _Workspace()


# ---------------------------------------------------------------------------------------------
# one layer's weight: staged while it loads, compressed once it is complete


@dataclass
class _Packed:
    """A layer's shard in floatzip's code on its device, and how to decode it."""

    decoder: Any  # blocks._CpuDecoder or blocks._CudaDecoder: decodes into a device buffer at offset 0
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int  # of the code held on the device
    device: torch.device
    buffer: _DeviceBuffer
    ct: CompressedTensor | None  # on the CPU, the record when the weight is one (for row lookups)
    cts: list[CompressedTensor] = field(default_factory=list)  # on the CPU, the parts (their blobs resident)
    key: int = 0  # the decoder's key for torch.ops.floatzip.decode_into
    rows_key: int = 0  # on the CPU, a 2-D weight's key for torch.ops.floatzip.embedding_rows

    def __post_init__(self) -> None:
        self.key = ops.register(self.decoder.decode)
        weakref.finalize(self, ops.unregister, self.key)
        if self.ct is not None and self.ct.tiled and len(self.shape) == 2:
            self.rows_key = ops.register_rows(_row_gather(self.ct), self.shape[1], self.dtype)
            weakref.finalize(self, ops.unregister_rows, self.rows_key)

    def decoded(self) -> torch.Tensor:
        """The weight, decoded into the device's buffer (valid until the next layer decodes). One custom
        operator, so that torch.compile keeps the graph whole and CUDA graphs record the launch."""
        buffer = self.buffer.tensor
        assert buffer is not None
        torch.ops.floatzip.decode_into(buffer, self.key)
        return buffer[: math.prod(self.shape) * self.dtype.itemsize].view(self.dtype).view(self.shape)

    def host_copy(self) -> torch.Tensor:
        """The decoded weight in host memory (its own tensor)."""
        if self.cts:
            return torch.cat([decompress_tensor(ct).view(-1) for ct in self.cts]).view(self.shape)
        return self.decoded().cpu().clone()

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of a 2-D weight (an embedding lookup); on the CPU only their tiles are decoded."""
        if self.rows_key:
            return torch.ops.floatzip.embedding_rows(ids.reshape(-1), self.rows_key).view(*ids.shape, self.shape[1])
        return torch.nn.functional.embedding(ids, self.decoded())


@dataclass
class _Slot:
    """The floatzip state of one weight parameter; shared by a tied ``lm_head`` and its embedding.

    A part that arrives exactly as the layer holds it (tensor parallel 1: a whole ``o_proj``, or the ``q``
    of a QKV layer) is kept in the code it was stored in, never staged nor coded again; the parts of a
    merged layer are then decoded one after the other into the layer's rows. Any other load (a shard cut
    by vLLM's loader, a fused checkpoint tensor) goes through a host staging tensor of the shard's shape,
    coded once the last part is in."""

    param: Parameter
    device: torch.device
    order: tuple[Any, ...]  # the shard ids of the weight's row blocks, in row order ((None,): one piece)
    part_rows: dict[Any, int] | None  # rows of each part when parts may be taken as they arrive
    inner: Callable[..., Any]  # vLLM's own weight loader of the layer
    where: str = "layer"
    backend: str = "auto"
    seen: set[Any] = field(default_factory=set)
    parts: dict[Any, CompressedTensor] = field(default_factory=dict)
    staged: bool = False
    packed: _Packed | None = None
    plain: bool = False  # stored as it is (too small to pay, or not a float)

    @property
    def ready(self) -> bool:
        return self.packed is not None or self.plain

    def load(self, loaded_weight: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.ready:
            raise InputError(f"{self.where}: weight loaded again after it was complete")
        shard_id = args[0] if args else kwargs.get("loaded_shard_id", kwargs.get("shard_id"))
        result = None
        if not self.staged and self._fits(shard_id, loaded_weight):
            record = getattr(loaded_weight, RECORD_ATTR, None)
            self.parts[shard_id] = record if record is not None else compress_tensor(loaded_weight)
        else:
            self._stage()
            result = self.inner(self.param, loaded_weight, *args, **kwargs)
        self.seen.update(shard_id if isinstance(shard_id, tuple | list) else (shard_id,))
        if None in self.seen or set(self.order) <= self.seen:
            self.finish()
        return result

    def _fits(self, shard_id: Any, t: torch.Tensor) -> bool:
        if self.part_rows is None or not isinstance(shard_id, str | int | None) or shard_id not in self.part_rows:
            return False
        cols = self.param.shape[1]
        return (
            shard_id not in self.parts and t.dtype == self.param.dtype and t.shape == (self.part_rows[shard_id], cols)
        )

    def _stage(self) -> None:
        """Switch to a host staging tensor, the parts taken so far decoded into it by vLLM's loader."""
        if self.staged:
            return
        self.param.data = torch.empty(self.param.shape, dtype=self.param.dtype, device="cpu")
        self.staged = True
        for shard_id, ct in self.parts.items():
            self.inner(self.param, decompress_tensor(ct), *([] if shard_id is None else [shard_id]))
        self.parts.clear()

    def finish(self) -> None:
        """Make the weight resident on its device, in floatzip's code (or plain when coding does not pay)."""
        if self.ready:
            return
        if not self.staged and self.parts:
            cts = [self.parts[s] for s in self.order if s in self.parts]
            # the parts decode one after the other into the layer's buffer: each must end on its alignment
            if len(cts) == len(self.order) and all(ct.original_nbytes % blocks.ALIGN == 0 for ct in cts[:-1]):
                self.packed = _pack(cts, self.param.shape, self.device, self.where, self.backend)
                self.parts.clear()
                return
            self._stage()
        staged = self.param.data
        if not self.staged or spec.layout_for(staged.dtype) is None or staged.numel() < spec.MIN_ENCODED_NUMEL:
            self._keep_plain(staged)
            return
        ct = compress_tensor(staged)
        if ct.nbytes >= ct.original_nbytes:
            self._keep_plain(staged)
            return
        self.packed = _pack([ct], staged.shape, self.device, self.where, self.backend)
        self.param.data = _stand_in(staged.shape, staged.dtype, self.device)

    def _keep_plain(self, staged: torch.Tensor) -> None:
        self.param.data = staged.to(self.device)
        self.plain = True

    def weight(self) -> torch.Tensor:
        if self.packed is not None:
            return self.packed.decoded()
        if not self.plain:
            raise InputError(f"{self.where}: used before its weights were loaded")
        return self.param


def _row_gather(ct: CompressedTensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Rows of a 2-D record by flat ids (any order, repeats allowed), decoding only the tiles that hold them."""
    decoder = blocks._RowDecoder(ct)

    def gather(ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= decoder.rows):
            raise IndexError("index out of range in self")
        unique, inverse = torch.unique(ids.cpu(), sorted=True, return_inverse=True)
        return decoder.gather(unique)[inverse].to(ids.device)

    return gather


def _stand_in(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of the weight's shape, dtype and device that holds one element (reads as zeros)."""
    return torch.zeros((), dtype=dtype, device=device).expand(shape)


BACKENDS = ("auto", "cpu", "cuda", "emulated")
"""Decode backends of the vLLM method: ``auto`` (the CUDA kernel on CUDA, the compiled core on the CPU), or
``emulated``: on the CPU, the CUDA kernel's batches decoded by its own code (what tests the CUDA path here)."""


def _pack(
    cts: list[CompressedTensor], shape: torch.Size, device: torch.device, where: str, backend: str = "auto"
) -> _Packed:
    """The weight of ``shape``, made of ``cts`` one after the other (its row blocks), made resident on
    ``device``: on CUDA only the device batch is kept, after one decode on the device checked against each
    part's CRC-32C."""
    dtype = cts[0].dtype
    nbytes = math.prod(shape) * cts[0].layout.nbytes
    if any(ct.dtype != dtype for ct in cts) or sum(ct.original_nbytes for ct in cts) != nbytes:
        raise InputError(f"{where}: its parts do not make a {dtype} weight of shape {list(shape)}")
    buffer = WORKSPACE.reserve(device, nbytes)
    if device.type not in ("cuda", "cpu"):
        raise InputError(f"{where}: floatzip decodes on CUDA devices and the CPU, not {device}")
    if backend not in (("auto", "cuda") if device.type == "cuda" else ("auto", "cpu", "emulated")):
        raise InputError(f"{where}: the {backend} backend does not decode into {device}")
    if device.type == "cuda" or backend == "emulated":
        decoder: Any = blocks._CudaDecoder(cts, device, offload=False, emulated=backend == "emulated")
        decoder.names = [f"{where} (part {i})" for i in range(len(cts))]
        ends = list(itertools.accumulate(ct.original_nbytes for ct in cts))
        if list(decoder.offsets) != [0, *ends[:-1]]:  # the parts must decode into consecutive rows
            raise InputError(f"{where}: its parts do not decode into consecutive rows")
        assert buffer.tensor is not None
        decoder.verify(buffer.tensor)
        return _Packed(decoder, tuple(shape), dtype, decoder.stored_nbytes, device, buffer, None)
    one = cts[0] if len(cts) == 1 and cts[0].shape == tuple(shape) else None
    nbytes_code = sum(ct.nbytes for ct in cts)
    return _Packed(blocks._CpuDecoder(cts, "cpu"), tuple(shape), dtype, nbytes_code, device, buffer, one, cts)


def _slot_of(layer: torch.nn.Module) -> _Slot:
    slot: _Slot | None = getattr(layer, "_floatzip", None)
    if slot is None:
        raise InputError(f"{type(layer).__name__} has no floatzip weights (create_weights was not called)")
    return slot


def _loader(slot: _Slot) -> Callable[..., Any]:
    """The weight loader vLLM calls: the slot takes the part as coded, or stages it with vLLM's own loader."""

    def weight_loader(param: Parameter, loaded_weight: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if is_blob(loaded_weight) and slot.param.dtype != torch.uint8:
            raise InputError(
                f"{slot.where}: got a floatzip blob, not weights: load floatzip checkpoints with vLLM's "
                f"--load-format auto (the default) or {LOAD_FORMAT}"
            )
        return slot.load(loaded_weight, args, kwargs)

    return weight_loader


def _staged_weight(
    layer: torch.nn.Module,
    partition_rows: list[int],
    cols: int,
    dtype: torch.dtype,
    inner: Callable[..., Any],
    where: str,
    backend: str,
) -> tuple[Parameter, _Slot]:
    """The weight parameter (a stand-in until its first staged load) and its slot."""
    device = torch.get_default_device()
    shape = torch.Size((sum(partition_rows), cols))
    weight = Parameter(_stand_in(shape, dtype, torch.device("cpu")), requires_grad=False)
    order = _shard_order(layer)
    takes_parts = len(order) == len(partition_rows) and _unsharded(layer)
    part_rows = dict(zip(order, partition_rows, strict=True)) if takes_parts else None
    slot = _Slot(weight, device, order, part_rows, inner, where=where, backend=backend)
    setattr(layer, "_floatzip", slot)  # noqa: B010 (nn.Module would refuse a typed attribute)
    return weight, slot


def _shard_order(layer: torch.nn.Module) -> tuple[Any, ...]:
    """The shard ids vLLM loads a layer's weight in, in the order of its rows."""
    if isinstance(layer, QKVParallelLinear):
        return ("q", "k", "v")
    if isinstance(layer, MergedColumnParallelLinear):
        return tuple(range(len(layer.output_sizes)))
    return (None,)


def _unsharded(layer: torch.nn.Module) -> bool:
    """Whether each checkpoint tensor of the layer arrives whole, as the layer holds it (no TP cut, no
    vocabulary padding)."""
    if isinstance(layer, ReplicatedLinear):
        return True
    if isinstance(layer, VocabParallelEmbedding):
        return layer.tp_size == 1 and layer.num_embeddings_per_partition == layer.org_vocab_size
    return getattr(layer, "tp_size", 1) == 1


# ---------------------------------------------------------------------------------------------
# the quantization method


class FloatzipVllmConfig(QuantizationConfig):
    """The ``floatzip`` quantization method of vLLM: lossless, decoded on the fly, bit-identical outputs."""

    def __init__(self, format_version: int = spec.FORMAT_VERSION, backend: str = "auto") -> None:
        super().__init__()
        self.format_version = checked_format_version(format_version)
        if backend not in BACKENDS:
            raise InputError(f"unknown floatzip decode backend {backend!r}; known: {', '.join(BACKENDS)}")
        self.backend = backend

    def __repr__(self) -> str:
        return f"FloatzipVllmConfig(format_version={self.format_version}, backend={self.backend!r})"

    def get_name(self) -> str:
        return spec.QUANT_METHOD

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 80  # the CUDA kernel is built and checked for sm_80 and sm_90a

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FloatzipVllmConfig:
        return cls(config.get("format_version", spec.FORMAT_VERSION), config.get("backend", "auto"))

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        if isinstance(layer, LinearBase):
            return FloatzipLinearMethod(prefix, self.backend)
        if isinstance(layer, VocabParallelEmbedding):  # ParallelLMHead included
            return FloatzipEmbeddingMethod(prefix, self.backend)
        return None


def _gemm() -> Callable[..., torch.Tensor]:
    """The matmul vLLM's unquantized linear method runs here (so outputs match its BF16 model bit for bit).
    On the CPU vLLM's own path needs its C++ kernels, which CPU-only vLLM wheels lack: ``F.linear``."""
    from vllm.config import get_current_vllm_config_or_none
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return default_unquantized_gemm
    config = get_current_vllm_config_or_none()
    return dispatch_unquantized_gemm(config.kernel_config.linear_backend if config is not None else "auto")


class _WeightMethod:
    """What floatzip's linear and embedding methods share: the weight staged, then compressed on its device,
    decoded per call, and vLLM's own unquantized matmul over it."""

    requires_device_loading = False  # the staged shard is coded on the host; only the code moves

    def __init__(self, prefix: str = "", backend: str = "auto") -> None:
        self.prefix = prefix
        self.backend = backend
        self._gemm = _gemm()

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        inner = extra_weight_attrs.pop("weight_loader")
        weight, slot = _staged_weight(
            layer,
            output_partition_sizes,
            input_size_per_partition,
            params_dtype,
            inner,
            self.prefix or type(layer).__name__,
            self.backend,
        )
        layer.register_parameter("weight", weight)
        set_weight_attrs(weight, {"input_dim": 1, "output_dim": 0, "weight_loader": _loader(slot)})
        set_weight_attrs(weight, extra_weight_attrs)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        _slot_of(layer).finish()

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self._gemm(layer, x, _slot_of(layer).weight(), bias)


class FloatzipLinearMethod(_WeightMethod, LinearMethodBase):
    """Every ``LinearBase`` of a floatzip checkpoint: the shard compressed on its device, decoded per call."""


class FloatzipEmbeddingMethod(_WeightMethod, QuantizeMethodBase):
    """``VocabParallelEmbedding`` and ``ParallelLMHead``: the vocabulary shard compressed; a lookup decodes
    the rows it needs (on the CPU) or the shard (on CUDA), the LM head decodes the shard."""

    def embedding(self, layer: torch.nn.Module, input_: torch.Tensor) -> torch.Tensor:
        slot = _slot_of(layer)
        if slot.packed is not None:
            return slot.packed.rows(input_)
        return torch.nn.functional.embedding(input_, slot.weight())

    def tie_weights(self, layer: torch.nn.Module, embed_tokens: torch.nn.Module) -> torch.nn.Module:
        """Share the embedding's compressed weight (once stored). vLLM also re-ties after loading when the
        checkpoint's own ``lm_head`` equals the embedding: then the two are compared decoded, bit for bit."""
        ours: _Slot | None = getattr(layer, "_floatzip", None)
        theirs = _slot_of(embed_tokens)
        both_loaded = ours is not None and ours is not theirs and ours.ready and theirs.ready
        if both_loaded and ours is not None and not torch.equal(_host_bits(ours), _host_bits(theirs)):
            logger.warning("%s: not tied, it differs from the input embedding", self.prefix or "lm_head")
            return layer
        setattr(layer, "_floatzip", theirs)  # noqa: B010
        layer.weight = embed_tokens.weight
        return layer


def _host_bits(slot: _Slot) -> torch.Tensor:
    return decoded_weight(slot).contiguous().view(-1).view(torch.uint8)


# ---------------------------------------------------------------------------------------------
# the weight stream


class _CheckpointIndex:
    """What the weight stream needs from a floatzip checkpoint's files: which names are blobs, the original
    dtype and shape of each, and every tensor's CRC-32C."""

    def __init__(self, files: Iterable[CompressedFile]) -> None:
        self.files: dict[str, CompressedFile] = {}
        self.original: dict[str, Entry] = {}  # by name, the tensor's entry in its file's original header
        self.members: dict[str, torch.Tensor] = {}  # small tensors coded in groups, decoded and checked
        for cf in files:
            for e in cf.original.entries:
                self.files[e.name] = cf
                self.original[e.name] = e
            self.members.update(member_tensors(cf))

    def restore(self, name: str, t: torch.Tensor) -> torch.Tensor:
        cf = self.files.get(name)
        if cf is None:
            return t
        where = f"{cf.path}: tensor {name!r}"
        if name in cf.members:
            if not is_blob(t):
                raise FormatError(f"{where}: stored in a group but is not its record or mark")
            return self.members[name]
        if name in cf.encoded:
            if not is_blob(t):
                raise FormatError(f"{where}: listed as encoded but is not a blob")
            ct = CompressedTensor.from_bytes(t.detach().cpu().numpy(), where, copy=False)
            o = self.original[name]
            if ct.layout.name != o.dtype or ct.shape != o.shape:
                raise FormatError(
                    f"{where}: the blob holds {ct.layout.name}{list(ct.shape)}, the original {o.dtype}{list(o.shape)}"
                )
            if cf.crcs is not None and ct.data_crc32 != cf.crcs[name]:
                raise IntegrityError(f"{where}: checksum mismatch (corrupt, or stored under the wrong name)")
            out = decompress_tensor(ct)  # checked against the blob's CRC-32C as it decodes
            setattr(out, RECORD_ATTR, ct)
            return out
        if cf.crcs is not None:
            data = t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
            if _core.crc32c(data) != cf.crcs[name]:
                raise IntegrityError(f"{where}: checksum mismatch (corrupt data)")
        return t


def floatzip_files(files: Iterable[str | Path]) -> list[CompressedFile]:
    """The floatzip-compressed safetensors files among ``files``, opened and cross-checked."""
    out = []
    for f in files:
        path = Path(f)
        if path.suffix == ".safetensors" and spec.META_VERSION in read_header(path).metadata:
            out.append(open_compressed(path))
    return out


@dataclass
class LoadStats:
    """What the last weight stream did: tensors decoded from blobs, plain ones checked, and tensors passed
    on as stored because the model drops them (another pipeline stage's layers)."""

    decoded: int = 0
    checked: int = 0
    skipped: int = 0


LAST_LOAD = LoadStats()


def restored_weights(
    stream: Iterable[tuple[str, torch.Tensor]],
    files: Iterable[CompressedFile],
    prefix: str = "",
    unused: Callable[[str], bool] | None = None,
) -> Generator[tuple[str, torch.Tensor], None, None]:
    """``stream`` (vLLM's (name, tensor) pairs of the files, names prefixed with ``prefix``) with every
    blob decoded and every tensor checked against its checksum, except those ``unused(name)`` says the model
    drops unread, which pass on as stored (with pipeline parallel, each stage reads only its own layers)."""
    global LAST_LOAD
    index = _CheckpointIndex(files)
    LAST_LOAD = stats = LoadStats()
    for name, t in stream:
        if unused is not None and unused(name):
            stats.skipped += 1
            yield name, t
            continue
        key = name[len(prefix) :] if prefix and name.startswith(prefix) else name
        out = index.restore(key, t)
        if out is t:
            stats.checked += 1
        else:
            stats.decoded += 1
        yield name, out


class FloatzipModelLoader(DefaultModelLoader):
    """vLLM's default loader, with a floatzip checkpoint's blobs decoded (and checked) as they stream."""

    _model: torch.nn.Module | None = None

    def load_weights(self, model: torch.nn.Module, model_config: Any) -> None:
        self._model = model  # to tell which tensors another pipeline stage reads
        try:
            super().load_weights(model, model_config)
        finally:
            self._model = None

    def _unused(self) -> Callable[[str], bool] | None:
        model = self._model
        if model is None:
            return None
        from vllm.model_executor.models.utils import get_pp_missing_layer_names

        missing = tuple(get_pp_missing_layer_names(model))
        return (lambda name: name.startswith(missing)) if missing else None

    def _get_weights_iterator(self, source: Any) -> Generator[tuple[str, torch.Tensor], None, None]:
        stream = super()._get_weights_iterator(source)
        _, files, use_safetensors, _ = self._prepare_weights(
            source.model_or_path,
            source.subfolder,
            source.revision,
            source.fall_back_to_pt,
            source.allow_patterns_overrides,
        )
        compressed = floatzip_files(files) if use_safetensors else []
        if not compressed:
            return stream
        logger.info("floatzip: decoding the weights of %d compressed files as they load", len(compressed))
        return restored_weights(stream, compressed, source.prefix, self._unused())


# ---------------------------------------------------------------------------------------------
# registration


_registered = False


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the ``floatzip`` quantization method and load
    format, and make vLLM's default load format (``auto``) decode floatzip checkpoints. Idempotent."""
    global _registered
    if _registered:
        return
    register_quantization_config(spec.QUANT_METHOD)(FloatzipVllmConfig)
    register_model_loader(LOAD_FORMAT)(FloatzipModelLoader)
    from vllm.config.load import LoadConfig

    if type(get_model_loader(LoadConfig(load_format="auto"))) is DefaultModelLoader:
        # the same loader for every other checkpoint: vLLM's warning that "auto" is overwritten would only
        # alarm people who load other models in this environment, so it is replaced by our own note
        vllm_log = logging.getLogger("vllm.model_executor.model_loader")
        level = vllm_log.level
        vllm_log.setLevel(logging.ERROR)
        try:
            register_model_loader("auto")(FloatzipModelLoader)
        finally:
            vllm_log.setLevel(level)
        logger.debug("floatzip: vLLM's default load format also decodes floatzip checkpoints")
    _registered = True


def decoded_weight(layer: torch.nn.Module | _Slot) -> torch.Tensor:
    """A host copy of a floatzip layer's decoded weight shard (for checks; decodes the whole shard)."""
    slot = layer if isinstance(layer, _Slot) else _slot_of(layer)
    if slot.packed is not None:
        return slot.packed.host_copy()
    return slot.param.detach().cpu().clone()


def resident_bytes(model: torch.nn.Module) -> int:
    """Bytes of floatzip code held by ``model``'s layers (a tied weight counted once)."""
    seen: set[int] = set()
    total = 0
    for m in model.modules():
        slot = getattr(m, "_floatzip", None)
        if isinstance(slot, _Slot) and id(slot) not in seen:
            seen.add(id(slot))
            total += slot.packed.nbytes if slot.packed is not None else slot.param.numel() * slot.param.element_size()
    return total


__all__ = [
    "LAST_LOAD",
    "LOAD_FORMAT",
    "WORKSPACE",
    "FloatzipEmbeddingMethod",
    "FloatzipLinearMethod",
    "FloatzipModelLoader",
    "FloatzipVllmConfig",
    "LoadStats",
    "decoded_weight",
    "floatzip_files",
    "register",
    "resident_bytes",
    "restored_weights",
]
