"""`floatzip convert` and `floatzip inspect` on DF11 checkpoints, through the command line."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from floatzip.cli import main
from floatzip.convert.df11 import convert_df11

from .conftest import Df11Fixture
from .test_df11 import LAYER, LAYER_FILE, same_bits, tensors_of


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_then_decompress(tiny_df11: Df11Fixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "convert", str(tiny_df11.published), str(tmp_path / "fz"), "-q")
    assert code == 0, err
    assert "bit for bit" in out and "MB/s of BF16" in out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    df11, ours = (float(rows[k].split("=")[1].split("%")[0]) for k in ("DF11", "floatzip"))
    assert 60 < ours < 80 and 60 < df11 < 80  # which is smaller depends on size: see BENCHMARKS.md
    report = convert_df11(tiny_df11.published, tmp_path / "again")
    assert (df11, ours) == (round(100 * report.df11_ratio, 2), round(100 * report.tensor_ratio, 2))
    assert run(capsys, "decompress", str(tmp_path / "fz"), str(tmp_path / "bf16"), "-q")[0] == 0
    got = tensors_of(tmp_path / "bf16")
    assert got.keys() == tiny_df11.original.keys()
    assert all(same_bits(got[n], t) for n, t in tiny_df11.original.items())


def test_single_file_needs_model_config(
    tiny_df11: Df11Fixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "convert", str(tiny_df11.single), str(tmp_path / "fz"), "-q")
    assert code == 2 and err.count("\n") == 1 and "--model-config" in err
    assert not (tmp_path / "fz").exists()
    config = str(tiny_df11.published / "config.json")
    code, _, err = run(capsys, "convert", str(tiny_df11.single), str(tmp_path / "fz"), "--model-config", config, "-q")
    assert code == 0, err
    assert run(capsys, "decompress", str(tmp_path / "fz"), str(tmp_path / "bf16"), "-q")[0] == 0
    got = tensors_of(tmp_path / "bf16")
    assert got.keys() == tiny_df11.original.keys()
    assert all(same_bits(got[n], t) for n, t in tiny_df11.original.items())


def test_inspect_df11(tiny_df11: Df11Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect", str(tiny_df11.published))
    assert code == 0 and "floatzip would store" in out and "a DF11 checkpoint: DF11 stores" in out
    code, out, _ = run(capsys, "inspect", str(tiny_df11.published), "--json")
    doc = json.loads(out)
    assert code == 0 and 0.6 < doc["ratio"] < 0.8 and 0.6 < doc["df11_ratio"] < 0.8
    assert len(doc["tensors"]) == len(tiny_df11.original)


def test_compress_refuses_df11(tiny_df11: Df11Fixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "compress", str(tiny_df11.published), str(tmp_path / "fz"))
    assert code == 2 and err.count("\n") == 1
    assert f"floatzip convert {tiny_df11.published} {tmp_path / 'fz'}" in err
    assert not (tmp_path / "fz").exists()


def test_corrupt_lut_is_one_line_and_leaves_nothing(
    tiny_df11: Df11Fixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "df11"
    shutil.copytree(tiny_df11.published, src)
    sd = load_file(src / LAYER_FILE)
    luts = sd[f"{LAYER}.luts"].clone()
    luts[0, :] = luts[0, 0]  # every first byte decodes to one exponent: the other codes become unreachable
    sd[f"{LAYER}.luts"] = luts
    save_file(sd, src / LAYER_FILE)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    code, out, err = run(capsys, "convert", str(src), str(tmp_path / "fz"), "-q")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("floatzip: error: ") and str(src / LAYER_FILE) in err and f"'{LAYER}.luts'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["df11"]  # no output, no scratch files
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the input is untouched


@pytest.mark.parametrize(
    ("field", "value"),
    [("bytes_per_thread", 2**59), ("threads_per_block", [3]), ("bytes_per_thread", 9), ("threads_per_block", 0)],
)
@pytest.mark.parametrize("verb", ["convert", "inspect"])
def test_crafted_layout_is_one_line_never_a_crash(
    tiny_df11: Df11Fixture, tmp_path: Path, field: str, value: object, verb: str
) -> None:
    """Layout fields that once overflowed an index in compiled code (a segfault): now one line, exit 2, nothing
    left behind. A subprocess, so that a crash shows as one."""
    import subprocess
    import sys

    src = tmp_path / "df11"
    shutil.copytree(tiny_df11.published, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["dfloat11_config"][field] = value
    (src / "config.json").write_text(json.dumps(cfg))
    args = ["convert", str(src), str(tmp_path / "fz")] if verb == "convert" else ["inspect", str(src)]
    proc = subprocess.run([sys.executable, "-m", "floatzip.cli", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["df11"]


def _edit_config(src: Path, edit: Callable[[dict], None]) -> None:
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg)
    (src / "config.json").write_text(json.dumps(cfg))


def _prepend_pattern(pattern: str) -> Callable[[dict], None]:
    def edit(cfg: dict) -> None:
        cfg["dfloat11_config"]["pattern_dict"] = {pattern: [], **cfg["dfloat11_config"]["pattern_dict"]}

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_prepend_pattern("model\\.layers\\.("), "invalid pattern"),
        (_prepend_pattern("x" * 2000), "a pattern of 2000 characters"),
        (lambda cfg: cfg.update(num_attention_heads=0), "a config transformers cannot read"),
    ],
    ids=["bad-regex", "long-regex", "zero-heads"],
)
def test_crafted_config_is_one_line(
    tiny_df11: Df11Fixture,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Callable[[dict], None],
    message: str,
) -> None:
    src = tmp_path / "df11"
    shutil.copytree(tiny_df11.published, src)
    _edit_config(src, edit)
    code, out, err = run(capsys, "convert", str(src), str(tmp_path / "fz"), "-q")
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["df11"]


def test_a_pattern_that_backtracks_catastrophically_does_not_hang(
    tiny_df11: Df11Fixture, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Python's re takes ~7 s for this on "model.layers.0" and exponentially longer with each nesting level
    src = tmp_path / "df11"
    shutil.copytree(tiny_df11.published, src)
    _edit_config(src, _prepend_pattern("(?:(?:(?:(?:[\\w.]+)+)+)+)+!"))
    start = time.perf_counter()
    code, _, err = run(capsys, "convert", str(src), str(tmp_path / "fz"), "-q")
    assert code == 0, err
    assert time.perf_counter() - start < 60


def test_a_pattern_past_its_time_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from floatzip.convert import df11
    from floatzip.errors import FormatError

    monkeypatch.setattr(df11, "_PATTERN_TIMEOUT_S", 0)
    with pytest.raises(FormatError, match="catastrophic backtracking"):
        df11._matching_pattern(["(?:\\w|\\.)+"], "model.layers.0", "config.json")
