"""The command line: every verb, and every user mistake as one line on stderr with exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from floatzip.cli import main
from tests.conftest import digests


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_compress_verify_inspect_decompress(
    small_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "compress", str(small_file), str(tmp_path / "c"), "-q")
    assert code == 0
    assert "ratio" in out and "MB/s" in out and "4 of 7 tensors entropy-coded" in out
    code, out, _ = run(capsys, "verify", str(tmp_path / "c"), "-q")
    assert code == 0 and out.startswith("OK: 1 files") and "bit for bit" in out
    code, out, _ = run(capsys, "inspect", str(tmp_path / "c"), "--json", "--plot", str(tmp_path / "p.png"))
    assert code == 0
    doc = json.loads(out)
    assert doc["compressed"] and len(doc["tensors"]) == 7
    a = next(t for t in doc["tensors"] if t["name"] == "a.weight")
    assert a["encoded"] and 0 < a["exponent_entropy"] < 8 and a["bits_per_weight"] < 16
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run(capsys, "inspect", str(small_file))
    assert code == 0 and "would store" in out
    code, out, _ = run(capsys, "decompress", str(tmp_path / "c"), str(tmp_path / "d"), "-q")
    assert code == 0 and "every sha256 matches" in out
    assert digests(tmp_path / "d" / "model.safetensors") == digests(small_file)


def test_compress_with_one_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--max-tables 1``: every blob keeps one code table (the faster encoder), and restores byte for byte."""
    import torch
    from safetensors.torch import save_file

    from floatzip.format.blob import CompressedTensor
    from floatzip.format.checkpoint import read_compressed_file

    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(-3, 0, 64).repeat_interleave(4096)  # tiles of different scales: tables would pay
    save_file({"w": (torch.randn(64 * 4096, generator=g) * scales).to(torch.bfloat16)}, str(tmp_path / "m.safetensors"))
    for n, out in ((0, "auto"), (1, "one")):
        code, _, _ = run(capsys, "compress", str(tmp_path / "m.safetensors"), str(tmp_path / out), "-q",
                         "--max-tables", str(n))  # fmt: skip
        assert code == 0
    tables = {}
    for out in ("auto", "one"):
        (ct,) = [t for t in read_compressed_file(tmp_path / out / "m.safetensors").values()]
        assert isinstance(ct, CompressedTensor)
        tables[out] = int(ct.v2["n_tables"])
    assert tables["one"] == 1 < tables["auto"]
    code, _, _ = run(capsys, "decompress", str(tmp_path / "one"), str(tmp_path / "d"), "-q")
    assert code == 0 and digests(tmp_path / "d" / "m.safetensors") == digests(tmp_path / "m.safetensors")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compress", "{missing}", "{out}"], "missing: no such file or directory"),
        (["compress", "{text}", "{out}"], "notes.txt: not a .safetensors file"),
        (["compress", "{garbage}", "{out}"], "model.safetensors: not a safetensors file"),
        (["verify", "{missing}"], "missing: no such directory"),
        (["decompress", "{src}", "{out}"], "not a floatzip checkpoint"),
        (["inspect", "{missing}"], "missing: no such file or directory"),
        (["compress", "{src}", "{out}", "--max-tables", "17"], "--max-tables 17: must be from 0"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.safetensors").write_bytes(b"\xff" * 64)
    paths = {"missing": tmp_path / "missing", "text": tmp_path / "notes.txt", "out": tmp_path / "out",
             "garbage": tmp_path / "src" / "model.safetensors", "src": tmp_path / "src"}  # fmt: skip
    code, _out, err = run(capsys, *[a.format(**paths) for a in argv])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("floatzip: error: ") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint_through_the_installed_command(small_file: Path, tmp_path: Path) -> None:
    """The console script itself: no traceback, exit 2, the file named."""
    assert main(["compress", str(small_file), str(tmp_path / "c"), "-q"]) == 0
    path = tmp_path / "c" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    exe = Path(sys.executable).parent / "floatzip"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "floatzip.cli"]
    proc = subprocess.run([*cmd, "verify", str(tmp_path / "c"), "-q"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=False)  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("floatzip: error: ") and "model.safetensors" in proc.stderr


def test_demo_runs_on_the_real_weights(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "demo", "-q")
    assert code == 0
    assert "bit-exact        yes" in out
    assert "run compressed   yes" in out
    # the compressed model run both ways, each bit-identical (above): per unit holds less than the plain weights
    mb = {m[1].strip(): float(m[2]) for m in re.finditer(r"\n    (\S[^\n]*?)\s+([\d.]+) MB of weights", out)}
    assert sorted(mb) in (["auto: once", "per unit", "plain"], ["auto: per unit", "per unit", "plain"])
    assert mb["per unit"] < 0.8 * mb["plain"]
    ratio = float(out.split("ratio")[1].split("%")[0])
    assert 60 < ratio < 66.5


def test_unsupported_inputs_say_what_they_are_and_how_to_get_there(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    torch_only = tmp_path / "bin-model"
    torch_only.mkdir()
    (torch_only / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + b"\0" * 60)
    (torch_only / "config.json").write_text("{}")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    for argv, expect in [
        (("compress", str(torch_only), str(tmp_path / "o1")), "pytorch_model.bin is a PyTorch checkpoint"),
        (("inspect", str(torch_only)), "pytorch_model.bin is a PyTorch checkpoint"),
        (("compress", str(gguf), str(tmp_path / "o2")), "a GGUF file"),
        (("inspect", str(gguf)), "not a safetensors file: a GGUF file"),
        (("inspect", str(torch_only / "pytorch_model.bin")), "save_pretrained"),
    ]:
        code, _, err = run(capsys, *argv)
        assert code == 2 and expect in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
