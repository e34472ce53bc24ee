"""``cpu_strategy`` on every loading path: "once" (decode at load), "per_unit" (decode each block before it runs),
"auto" (by the available memory, injected here); bit-identical logits for each, the choice and its figures in
memory_report's table, the option through the configs' to_dict / from_dict, and one-line errors."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from floatzip.errors import InputError
from floatzip.format.blob import CompressedTensor
from floatzip.runtime import compress_model, load_model, memory_report, runtime_of, strategy
from floatzip.runtime.blocks import install

from .conftest import Fixture, token_ids
from .test_modules import IDS, Net, _net

transformers = pytest.importorskip("transformers")

from floatzip.runtime.quantizer import FloatzipConfig  # noqa: E402

AMPLE = 1 << 40  # 1 TiB: "auto" decodes once
SCARCE = 1 << 20  # 1 MiB: less than the reserve "auto" keeps, whatever the model


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16) if t.element_size() == 2 else t.view(torch.int32)


def _available(monkeypatch: pytest.MonkeyPatch, figure: int) -> None:
    monkeypatch.setattr(strategy, "available_memory", lambda: (figure, "injected"))


def _load(path: Path, **options: object) -> torch.nn.Module:
    kwargs = {"quantization_config": FloatzipConfig(**options)} if options else {}
    return transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()


# -- the decision ---------------------------------------------------------------------------


def test_auto_decodes_once_only_with_the_margin() -> None:
    needed = 300 << 20
    want = strategy.required_bytes(needed)
    assert want == needed + needed // 4 + (1 << 30)
    at = strategy.decide("auto", needed, available=want)
    assert (at.strategy, at.needed_bytes, at.required_bytes, at.available_bytes) == ("once", needed, want, want)
    below = strategy.decide("auto", needed, available=want - 1)
    assert below.strategy == "per_unit" and "do not fit in" in below.reason
    assert "300.00 MiB" in at.reason and "fit in the 1.37 GiB available (given)" in at.reason
    assert strategy.decide("once", needed).strategy == "once"  # asked for: no figure read
    assert strategy.decide("per_unit", needed, available=AMPLE).strategy == "per_unit"
    offload = strategy.decide("auto", needed, offload=True, available=AMPLE)
    assert offload.strategy == "per_unit" and "offload" in offload.reason
    none = strategy.decide("once", 0)
    assert none.strategy == "per_unit" and "no compressed weight is decoded on the CPU" in none.reason


def test_auto_with_no_memory_figure_decodes_per_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strategy, "available_memory", lambda: (None, "the available memory is unknown here"))
    d = strategy.decide("auto", 1 << 20)
    assert d.strategy == "per_unit" and d.available_bytes is None and "unknown" in d.reason


def test_available_memory_reads_meminfo_and_the_cgroup_limit(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text("MemTotal:  100 kB\nMemFree:   10 kB\nMemAvailable:   50 kB\n")
    assert strategy._meminfo_available(tmp_path / "meminfo") == 50 * 1024
    assert strategy._meminfo_available(tmp_path / "missing") is None
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1000000\n")
    (v2 / "memory.current").write_text("600000\n")
    (v2 / "memory.stat").write_text("anon 500000\ninactive_file 100000\n")
    assert strategy._cgroup_room(v2) == 1000000 - 600000 + 100000
    (v2 / "memory.max").write_text("max\n")
    assert strategy._cgroup_room(v2) is None
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    assert strategy._cgroup_room(tmp_path / "v1") is None
    (v1 / "memory.limit_in_bytes").write_text("2000000\n")
    (v1 / "memory.usage_in_bytes").write_text("500000\n")
    (v1 / "memory.stat").write_text("total_inactive_file 250000\n")
    assert strategy._cgroup_room(tmp_path / "v1") == 2000000 - 500000 + 250000
    figure, source = strategy.available_memory()  # this machine's own: a positive figure, said where from
    assert figure is None or (figure > 0 and source)


# -- transformers -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])  # gemma ties lm_head to its (row-decoded) embedding
@pytest.mark.parametrize("cpu_strategy", ["once", "per_unit", "auto"])
def test_each_strategy_gives_the_plain_logits(
    tiny_models: dict[str, Fixture], monkeypatch: pytest.MonkeyPatch, arch: str, cpu_strategy: str
) -> None:
    _available(monkeypatch, AMPLE)
    fx = tiny_models[arch]
    ids = token_ids()
    with torch.no_grad():
        expect = _load(fx.original)(ids).logits
        model = _load(fx.compressed, cpu_strategy=cpu_strategy)
        got = model(ids).logits
    assert got.dtype == expect.dtype and torch.equal(_bits(got), _bits(expect))
    report = memory_report(model)
    in_force = "per_unit" if cpu_strategy == "per_unit" else "once"
    assert report.strategy == in_force and report.cpu.asked == cpu_strategy
    rt = runtime_of(model)
    assert rt is not None
    if in_force == "once":
        assert not rt.units and not rt.buffers and not rt._sources  # nothing compressed kept
        assert report.compressed_bytes == report.buffer_bytes == 0 and report.once_bytes > 0
        assert report.resident_bytes == report.uncompressed_bytes
        if arch == "gemma3_text":
            assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as the plain model's
    else:
        assert rt.units and not rt.once and report.once_bytes == 0
    # generation, too
    assert torch.equal(_load(fx.original).generate(ids[:1], max_new_tokens=4, do_sample=False),
                       model.generate(ids[:1], max_new_tokens=4, do_sample=False))  # fmt: skip


def test_auto_picks_by_the_available_memory(tiny_models: dict[str, Fixture], monkeypatch: pytest.MonkeyPatch) -> None:
    fx = tiny_models["qwen2"]
    _available(monkeypatch, AMPLE)
    ample = memory_report(_load(fx.compressed))  # the default is "auto"
    _available(monkeypatch, SCARCE)
    scarce = memory_report(_load(fx.compressed))
    assert (ample.strategy, scarce.strategy) == ("once", "per_unit")
    assert ample.cpu.available_bytes == AMPLE and scarce.cpu.available_bytes == SCARCE
    assert ample.cpu.needed_bytes == scarce.cpu.needed_bytes == scarce.decoded_bytes > 0
    assert scarce.units > 0 and scarce.compressed_bytes > 0 and ample.units == 0


def test_memory_report_is_a_table_naming_the_strategy_and_why(
    tiny_models: dict[str, Fixture], monkeypatch: pytest.MonkeyPatch
) -> None:
    _available(monkeypatch, SCARCE)
    report = memory_report(_load(tiny_models["llama"].compressed))
    text = str(report)
    assert text == report.format()
    lines = text.splitlines()
    numeric = lines[:11]  # the header and a row per figure: one width, values right-aligned
    assert numeric[0].split() == ["weights", "MiB"] and len({len(line) for line in numeric}) == 1
    rows = {line[: line.rindex("  ")].strip(): line.split()[-1] for line in numeric[1:]}
    assert float(rows["decode buffers"]) == pytest.approx(report.buffer_bytes / 2**20, abs=1e-3)
    assert float(rows["resident / uncompressed (%)"]) == pytest.approx(100 * report.ratio, abs=0.01)
    assert rows["units"] == str(report.units)
    tail = {line.split()[0]: line.split(None, 1)[1] for line in lines[11:]}
    assert tail["cpu_strategy"] == "per_unit (asked: auto)"
    needed = f"{report.cpu.needed_bytes / 2**20:.2f} MiB"
    assert needed in tail["why"] and "do not fit in the 1.00 MiB available (injected)" in tail["why"]
    assert tail["how"].startswith("each unit decoded just before it runs")
    _available(monkeypatch, AMPLE)
    once = str(memory_report(_load(tiny_models["llama"].compressed)))
    assert "once (asked: auto)" in once and "fit in the 1024.00 GiB available (injected)" in once
    assert "decoded at load into plain parameters" in once


def test_offload_is_per_unit_and_refuses_once(tiny_models: dict[str, Fixture]) -> None:
    fx = tiny_models["llama"]
    assert memory_report(_load(fx.compressed, offload=True)).strategy == "per_unit"
    with pytest.raises(InputError, match="offload=True keeps them compressed") as exc:
        FloatzipConfig(offload=True, cpu_strategy="once")
    assert "\n" not in str(exc.value)


# -- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"cpu_strategy": "once"}, {"cpu_strategy": "per_unit", "backend": "cpu"}, {"fused": True},
     {"offload": True, "backend": "emulated"}],
)  # fmt: skip
def test_the_options_round_trip_through_the_transformers_config(options: dict[str, object]) -> None:
    cfg = FloatzipConfig(**options)
    back = FloatzipConfig.from_dict(cfg.to_dict())
    for key, default in {"offload": False, "backend": "auto", "fused": False, "cpu_strategy": "auto"}.items():
        assert getattr(back, key) == getattr(cfg, key) == options.get(key, default), key
    assert back.get_loading_attributes() == cfg.get_loading_attributes()
    # a checkpoint's own config (what floatzip compress writes) holds no loading option
    assert set(cfg.to_dict()) == {"quant_method", "format_version", *options}


@pytest.mark.parametrize("bad", [{"cpu_strategy": "fast"}, {"cpu_strategy": None}, {"cpu_strategy": "ONCE"}])
def test_a_bad_cpu_strategy_is_one_line(bad: dict[str, object], tmp_path: Path) -> None:
    for make in (lambda: FloatzipConfig(**bad), lambda: strategy.check_cpu_strategy(bad["cpu_strategy"])):
        with pytest.raises(InputError, match=r"cpu_strategy must be one of 'auto', 'once', 'per_unit'") as exc:
            make()
        assert "\n" not in str(exc.value)
    compress_model(_net(), tmp_path / "fz")
    with pytest.raises(InputError, match="cpu_strategy must be one of") as exc:
        load_model(Net().to(torch.bfloat16), tmp_path / "fz", keep_compressed=True, cpu_strategy=bad["cpu_strategy"])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="cpu_strategy must be one of"):
        install(Net().to(torch.bfloat16), {}, cpu_strategy=bad["cpu_strategy"])  # type: ignore[arg-type]


def test_a_bad_value_set_after_the_config_is_refused_before_loading(tiny_models: dict[str, Fixture]) -> None:
    # transformers sets the loading options passed to from_pretrained on the checkpoint's config with setattr
    cfg = FloatzipConfig()
    cfg.cpu_strategy = "sometimes"
    with pytest.raises(InputError, match="FloatzipConfig: cpu_strategy must be one of"):
        transformers.AutoModelForCausalLM.from_pretrained(tiny_models["llama"].compressed, quantization_config=cfg)


# -- load_model ------------------------------------------------------------------------------


@pytest.mark.parametrize("cpu_strategy", ["once", "per_unit"])
def test_load_model_once_keeps_no_compressed_tensor(tmp_path: Path, cpu_strategy: str) -> None:
    net = _net()
    compress_model(net, tmp_path / "fz")
    gc.collect()
    before = sum(isinstance(o, CompressedTensor) for o in gc.get_objects())
    loaded = load_model(Net().to(torch.bfloat16), tmp_path / "fz", keep_compressed=True, cpu_strategy=cpu_strategy)
    gc.collect()
    kept = sum(isinstance(o, CompressedTensor) for o in gc.get_objects()) - before
    with torch.no_grad():
        assert torch.equal(_bits(net(IDS)), _bits(loaded(IDS)))
    assert kept == (0 if cpu_strategy == "once" else 7)  # 7 blobs (the tied head is the embedding's)
    assert memory_report(loaded).strategy == cpu_strategy


def test_load_model_options_need_keep_compressed(tmp_path: Path) -> None:
    compress_model(_net(), tmp_path / "fz")
    for options in ({"fused": True}, {"offload": True}, {"cpu_strategy": "once"}):
        with pytest.raises(InputError, match="options of keep_compressed=True") as exc:
            load_model(Net().to(torch.bfloat16), tmp_path / "fz", **options)  # type: ignore[arg-type]
        assert "\n" not in str(exc.value)
    # fused is passed through to the runtime: on the CPU no block is fused, the model runs as without it
    loaded = load_model(Net().to(torch.bfloat16), tmp_path / "fz", keep_compressed=True, fused=True,
                        cpu_strategy="per_unit")  # fmt: skip
    rt = runtime_of(loaded)
    assert rt is not None and rt.units and not rt.fused


def test_load_model_passes_fused_backend_and_offload_to_the_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from floatzip.runtime import blocks

    seen: dict[str, object] = {}
    real = blocks.install

    def spy(*args: object, **kwargs: object) -> object:
        seen.update(kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(blocks, "install", spy)
    compress_model(_net(), tmp_path / "fz")
    load_model(Net().to(torch.bfloat16), tmp_path / "fz", keep_compressed=True, backend="reference", offload=True,
               fused=True)  # fmt: skip
    assert {k: seen[k] for k in ("backend", "offload", "fused", "cpu_strategy")} == {
        "backend": "reference", "offload": True, "fused": True, "cpu_strategy": "auto"}  # fmt: skip


def test_install_takes_the_available_memory_figure() -> None:
    from floatzip.codec.encode import compress_tensor

    net = _net()
    by_id = {id(p): compress_tensor(p.detach()) for p in net.parameters() if p.numel() >= 4096}
    cts = {n: by_id[id(p)] for n, p in net.named_parameters(remove_duplicate=False) if id(p) in by_id}
    assert cts["head.weight"] is cts["embed.weight"]  # tied: one compressed tensor
    with torch.no_grad():
        expect = net(IDS)
    for figure, in_force in ((AMPLE, "once"), (SCARCE, "per_unit")):
        model = _net()
        rt = install(model, cts, available_bytes=figure)
        assert rt.cpu.strategy == in_force and rt.cpu.available_bytes == figure
        assert "(given)" in rt.cpu.reason
        assert (model.head.weight is model.embed.weight) == (in_force == "once")  # per unit: two units' views
        with torch.no_grad():
            assert torch.equal(_bits(model(IDS)), _bits(expect))
