"""The runtime's GPU path (one decode batch per unit) run end to end on the CPU: the unit's batch is built
exactly as for the GPU and decoded by the kernel's own per-tile and per-lane code (backend "emulated")."""

from __future__ import annotations

import pytest
import torch

from tests.runtime.conftest import Fixture


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_emulated_cuda_backend_gives_identical_logits(tiny_models: dict[str, Fixture], arch: str) -> None:
    from transformers import AutoModelForCausalLM

    import floatzip  # noqa: F401 (registers the quantizer)
    from floatzip.runtime.quantizer import FloatzipConfig

    fx = tiny_models[arch]
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(0))
    ref = AutoModelForCausalLM.from_pretrained(fx.original, dtype=torch.bfloat16)
    fz = AutoModelForCausalLM.from_pretrained(fx.compressed, quantization_config=FloatzipConfig(backend="emulated"))
    kinds = {type(u.decoder).__name__ for u in fz._floatzip_runtime.units}
    assert kinds == {"_CudaDecoder"}
    with torch.no_grad():
        a, b = ref(ids).logits, fz(ids).logits
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))


def _resealed(blob: bytearray) -> bytes:
    """``blob`` with its blob CRC (bytes 52..56) recomputed, as a forger who changed the streams would."""
    import struct

    from floatzip import _core

    blob[52:56] = b"\0\0\0\0"
    blob[52:56] = struct.pack("<I", _core.crc32c(bytes(blob)))
    return bytes(blob)


@pytest.mark.parametrize(("backend", "cpu_strategy"), [("emulated", "auto"), ("cpu", "per_unit"), ("cpu", "once")])
def test_a_forged_raw_stream_is_refused_at_install(backend: str, cpu_strategy: str) -> None:
    # the raw fields (low mantissa bits) are uncoded: a changed raw word still decodes, lane lengths and all,
    # so only the data CRC catches it; the GPU kernel does not compute it, so install checks each GPU unit once
    from torch import nn

    from floatzip.codec.encode import compress_tensor
    from floatzip.errors import IntegrityError
    from floatzip.format.blob import CompressedTensor
    from floatzip.runtime.blocks import install

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(128, 128, bias=False), nn.Linear(128, 128, bias=False)).to(torch.bfloat16)
    cts = {n: compress_tensor(p.detach()) for n, p in net.named_parameters()}
    good = install(nn.Sequential(nn.Linear(128, 128, bias=False), nn.Linear(128, 128, bias=False)).to(torch.bfloat16),
                   cts, backend=backend, cpu_strategy=cpu_strategy)  # fmt: skip
    assert good.units if cpu_strategy != "once" else good.once == {"0.weight", "1.weight"} and not good.units
    ct = cts["1.weight"]
    blob = bytearray(ct.to_bytes())
    raw_at = int(ct.v2["raw_at"])
    blob[raw_at + 8] ^= 0x10
    forged = CompressedTensor.from_bytes(_resealed(blob))  # a sound blob by its own checksum
    fresh = nn.Sequential(nn.Linear(128, 128, bias=False), nn.Linear(128, 128, bias=False)).to(torch.bfloat16)
    if backend == "emulated":
        with pytest.raises(IntegrityError, match=r"tensor '1\.weight': checksum mismatch after decoding"):
            install(fresh, {**cts, "1.weight": forged}, backend=backend)
    elif cpu_strategy == "once":  # decoded at install, by the CPU decoder, which checks the CRC
        with pytest.raises(IntegrityError, match="checksum"):
            install(fresh, {**cts, "1.weight": forged}, backend=backend, cpu_strategy=cpu_strategy)
    else:  # the CPU decoder checks the CRC on every decode, so the first forward refuses
        model = fresh
        install(model, {**cts, "1.weight": forged}, backend=backend, cpu_strategy=cpu_strategy)
        with pytest.raises(IntegrityError), torch.no_grad():
            model(torch.zeros(1, 128, dtype=torch.bfloat16))
