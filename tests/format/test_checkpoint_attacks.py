"""Checkpoints attacked as an adversary (or a bad disk) would: files that hang a reader, links out of the
directory, outputs in the wrong place or with the wrong modes, crafted manifests and configs, leftovers.
Every attack is built here; each must end in one floatzip error (or be refused up front), never a hang."""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from floatzip.errors import FormatError, InputError, IntegrityError
from floatzip.format import spec
from floatzip.format.checkpoint import (
    _manifest_digest,
    compress_checkpoint,
    decompress_checkpoint,
    staging_prefix,
    verify_checkpoint,
)
from tests.conftest import digests

CONFIG = {"model_type": "llama", "hidden_size": 64, "rms_norm_eps": 1e-6}


def within(seconds: float, fn: Callable[[], object]) -> object:
    """fn() on a daemon thread; fail (instead of hanging the suite) if it does not return in time."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


@pytest.fixture
def model_dir(small_file: Path) -> Path:
    (small_file.parent / "config.json").write_text(json.dumps(CONFIG))
    (small_file.parent / "notes.txt").write_text("hello")
    return small_file.parent


@pytest.fixture
def compressed(model_dir: Path, tmp_path: Path) -> Path:
    compress_checkpoint(model_dir, tmp_path / "c")
    return tmp_path / "c"


def rewrite_manifest(root: Path, change: Callable[[dict], None]) -> None:
    """Change the manifest and give it a matching digest, as a crafted (not merely corrupt) one would have."""
    path = root / spec.MANIFEST_NAME
    doc = json.loads(path.read_text())
    change(doc)
    doc["manifest_sha256"] = _manifest_digest(doc)
    path.write_text(json.dumps(doc))


# --- files that would hang a reader, links out of the directory ---------------------------------


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_a_fifo_or_device_in_the_source_is_refused_not_read(model_dir: Path, tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(model_dir / "pipe.bin")
    else:
        (model_dir / "pipe.bin").symlink_to("/dev/zero")
    with pytest.raises(InputError, match=r"pipe\.bin: .*not a regular file"):
        within(20, lambda: compress_checkpoint(model_dir, tmp_path / "c"))
    assert not (tmp_path / "c").exists()


def test_links_to_regular_files_are_read_as_the_files(model_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("shared tokenizer")
    (model_dir / "tokenizer.txt").symlink_to(outside)
    (model_dir / "loop").symlink_to(model_dir)  # a link to an ancestor is walked once
    compress_checkpoint(model_dir, tmp_path / "c")
    assert (tmp_path / "c" / "tokenizer.txt").read_text() == "shared tokenizer"
    assert not (tmp_path / "c" / "tokenizer.txt").is_symlink()


def test_a_hugging_face_cache_snapshot_compresses(small_file: Path, tmp_path: Path) -> None:
    # models--org--name/snapshots/<rev>/<file> -> ../../blobs/<hash>, as huggingface_hub lays out its cache
    repo = tmp_path / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    shutil.copyfile(small_file, repo / "blobs" / "f00d")
    (snap / "model.safetensors").symlink_to("../../blobs/f00d")
    compress_checkpoint(snap, tmp_path / "c")
    decompress_checkpoint(tmp_path / "c", tmp_path / "d")
    assert digests(tmp_path / "d" / "model.safetensors") == digests(small_file)
    # a compressed checkpoint downloaded into the cache the same way reads too
    crepo = tmp_path / "models--org--tiny-floatzip"
    (crepo / "blobs").mkdir(parents=True)
    csnap = crepo / "snapshots" / "4567def"
    csnap.mkdir(parents=True)
    for i, f in enumerate(sorted((tmp_path / "c").iterdir())):
        shutil.copyfile(f, crepo / "blobs" / f"b{i}")
        (csnap / f.name).symlink_to(f"../../blobs/b{i}")
    verify_checkpoint(csnap)
    decompress_checkpoint(csnap, tmp_path / "d2")
    assert digests(tmp_path / "d2") == digests(tmp_path / "d")


@pytest.mark.parametrize("target", ["secret", "/dev/zero"])
def test_a_link_in_a_compressed_checkpoint_that_leaves_it_is_refused(
    compressed: Path, tmp_path: Path, target: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("hello")  # same bytes as notes.txt: the sha256 alone would not stop the copy
    (compressed / "notes.txt").unlink()
    (compressed / "notes.txt").symlink_to(secret if target == "secret" else target)
    for act in (lambda: verify_checkpoint(compressed), lambda: decompress_checkpoint(compressed, tmp_path / "d")):
        with pytest.raises(FormatError, match=r"notes\.txt: a symbolic link to .*outside the checkpoint"):
            within(20, act)
    assert not (tmp_path / "d").exists()


# --- where outputs go and with which modes --------------------------------------------------------


def test_the_output_may_not_be_inside_the_source(model_dir: Path) -> None:
    before = digests(model_dir)
    with pytest.raises(InputError, match="inside the source directory"):
        compress_checkpoint(model_dir, model_dir / "compressed")
    assert digests(model_dir) == before and not (model_dir / "compressed").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_follow_the_umask(model_dir: Path, tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        compress_checkpoint(model_dir, tmp_path / "c")
        decompress_checkpoint(tmp_path / "c", tmp_path / "d")
    finally:
        os.umask(old)
    for d in (tmp_path / "c", tmp_path / "d"):
        assert d.stat().st_mode & 0o777 == 0o777 & ~umask
        assert (d / "notes.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_leftovers_of_a_killed_run_are_removed_by_the_next(model_dir: Path, tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{staging_prefix(tmp_path / 'c')}{int(dead.stdout)}-abcd.tmp"
    live = tmp_path / f"{staging_prefix(tmp_path / 'c')}{os.getpid()}-efgh.tmp"  # a run still going
    for d in (stale, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    compress_checkpoint(model_dir, tmp_path / "c")
    assert not stale.exists() and live.exists()


def test_sigterm_removes_the_staged_output(model_dir: Path, tmp_path: Path) -> None:
    # the CLI, made to sit in the middle of writing a file, is sent SIGTERM (timeout, docker and systemd do)
    script = (
        "import sys, time\n"
        "import floatzip.format.checkpoint as c\n"
        "real = c._compress_file\n"
        "def slow(*a, **k):\n"
        "    real(*a, **k); print('writing', flush=True); time.sleep(60)\n"
        "c._compress_file = slow\n"
        "from floatzip.cli import main\n"
        f"sys.exit(main(['compress', {str(model_dir)!r}, {str(tmp_path / 'c')!r}, '-q']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
    assert any(p.name.startswith(staging_prefix(tmp_path / "c")) for p in tmp_path.iterdir())
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err.strip() == "floatzip: terminated (SIGTERM); nothing was left half-written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# --- crafted manifests and configs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(files=5), "files is not a list"),
        (lambda d: d["files"][0].update(size="abc"), "bad size"),
        (lambda d: d["files"][0].update(size=-1), "bad size"),
        (lambda d: d["files"][0].update(sha256="00"), "bad sha256"),
        (lambda d: d["files"][0].update(path="a\x00b"), "bad path"),
        (lambda d: d["files"][0].update(path="config.json\nx"), "bad path"),
        (lambda d: d["files"][0].update(path="a//b"), "bad path"),
        (lambda d: d["files"][0].update(path=spec.MANIFEST_NAME), "bad path"),
        (lambda d: d["files"].append(dict(d["files"][0])), "a path listed twice"),
        (lambda d: d["files"][0].update(kind="exec"), "unknown kind"),
        (lambda d: d["files"].__setitem__(0, "x"), "bad manifest entry"),
    ],
)
def test_crafted_manifests_are_refused_in_one_line(
    compressed: Path, tmp_path: Path, change: Callable[[dict], None], message: str
) -> None:
    rewrite_manifest(compressed, change)
    for act in (lambda: verify_checkpoint(compressed), lambda: decompress_checkpoint(compressed, tmp_path / "d")):
        with pytest.raises(FormatError, match=message):
            act()
    assert not (tmp_path / "d").exists()


def test_one_changed_byte_in_the_manifest_is_caught(compressed: Path, tmp_path: Path) -> None:
    path = compressed / spec.MANIFEST_NAME
    path.write_text(path.read_text().replace('"config.json"', '"confi.json"'))
    for act in (lambda: verify_checkpoint(compressed), lambda: decompress_checkpoint(compressed, tmp_path / "d")):
        with pytest.raises(IntegrityError, match="the manifest is corrupt"):
            act()


def test_a_changed_config_fails_verify(compressed: Path) -> None:
    # the loader reads the stored config.json: a different eps would run a different model
    path = compressed / "config.json"
    config = json.loads(path.read_text())
    config["rms_norm_eps"] = 1e-5
    path.write_text(json.dumps(config, indent=2))
    with pytest.raises(IntegrityError, match=r"config\.json: differs from the original"):
        verify_checkpoint(compressed)


def test_a_config_quantized_by_another_method_is_named(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "config.json").write_text(json.dumps({**CONFIG, "quantization_config": "gptq"}))
    with pytest.raises(InputError, match=r"already quantized \(gptq\)"):
        compress_checkpoint(model_dir, tmp_path / "c")


@pytest.mark.parametrize("argv", [["verify", "{c}"], ["decompress", "{c}", "{d}"]])
def test_the_cli_says_one_line_for_each(compressed: Path, tmp_path: Path, argv: list[str]) -> None:
    rewrite_manifest(compressed, lambda d: d["files"][0].update(size="abc"))
    cmd = [a.format(c=compressed, d=tmp_path / "d") for a in argv]
    exe = Path(sys.executable).parent / "floatzip"
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "floatzip.cli"]
    proc = subprocess.run([*launcher, *cmd, "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "bad size" in proc.stderr and "Traceback" not in proc.stderr


# --- bombs in the container's metadata -----------------------------------------------------------


def rewrite_header(path: Path, change: Callable[[dict], None]) -> None:
    """Rewrite a safetensors file's header JSON in place (the data area unchanged)."""
    data = path.read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    doc = json.loads(data[8 : 8 + n])
    change(doc)
    raw = json.dumps(doc).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def stored_original_header(value: str) -> Callable[[dict], None]:
    """A header change: the original header stored whole (format v3's fallback) as ``value``."""

    def change(d: dict) -> None:
        d["__metadata__"].pop(spec.META_HEADER, None)
        d["__metadata__"][spec.META_ORIGINAL_HEADER] = value

    return change


def test_a_zlib_bomb_in_the_original_header_stops_at_the_cap(compressed: Path) -> None:
    bomb = base64.b64encode(zlib.compress(b" " * (150 << 20), 9)).decode()  # 150 MB in ~150 KB
    rewrite_header(compressed / "model.safetensors", stored_original_header(bomb))
    with pytest.raises(FormatError, match="over 104857600 bytes"):
        verify_checkpoint(compressed)


def test_an_original_header_with_more_tensors_than_the_file_is_not_parsed(compressed: Path) -> None:
    many = {f"t{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(100_000)}
    blob = base64.b64encode(zlib.compress(json.dumps(many).encode(), 9)).decode()
    rewrite_header(compressed / "model.safetensors", stored_original_header(blob))
    with pytest.raises(FormatError, match="lists more tensors than the file"):
        verify_checkpoint(compressed)


# --- format v3's records of what the file's own header does not say (docs/FORMAT.md §2.2) ---------


def _meta(d: dict) -> dict:
    meta: dict = d["__metadata__"]
    return meta


def _b64_changed(key: str, change: Callable[[bytearray], None]) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        data = bytearray(base64.b64decode(_meta(d)[key]))
        change(data)
        _meta(d)[key] = base64.b64encode(bytes(data)).decode()

    return edit


def _recipe(value: object) -> Callable[[dict], None]:
    return lambda d: _meta(d).update({spec.META_HEADER: json.dumps(value)})


def _rename_first(d: dict) -> None:
    first = next(k for k in d if k != "__metadata__")
    d["renamed"] = d.pop(first)


V3_ATTACKS: dict[str, tuple[Callable[[dict], None], type[Exception], str]] = {
    "recipe not JSON": (lambda d: _meta(d).update({spec.META_HEADER: "{"}), FormatError, "floatzip.header"),
    "recipe with an unknown key": (_recipe({"pad": 0, "x": 1}), FormatError, "floatzip.header"),
    "negative pad": (_recipe({"pad": -1}), FormatError, "floatzip.header"),
    "pad over the cap": (_recipe({"pad": 200 << 20}), FormatError, "floatzip.header"),
    "order not a permutation": (_recipe({"pad": 0, "order": [0] * 7}), FormatError, "floatzip.header"),
    "order too short": (_recipe({"pad": 0, "order": [0]}), FormatError, "floatzip.header"),
    "metadata position past the end": (
        _recipe({"pad": 0, "metadata": {}, "metadata_at": 99}), FormatError, "floatzip.header"),
    "a wrong pad": (
        _recipe({"pad": 0, "metadata": {"format": "pt"}}), IntegrityError, "original header does not match"),
    "both header records": (
        lambda d: _meta(d).update({spec.META_ORIGINAL_HEADER: "eJwDAAAAAAE="}), FormatError, "exactly one of"),
    "neither header record": (lambda d: _meta(d).pop(spec.META_HEADER), FormatError, "exactly one of"),
    "blob bitmap too long": (_b64_changed(spec.META_BLOBS, lambda b: b.append(0)), FormatError, "floatzip.blobs"),
    "blob bitmap bit past the last tensor": (
        _b64_changed(spec.META_BLOBS, lambda b: b.__setitem__(0, b[0] | 0x80)), FormatError, "past the last tensor"),
    "a plain tensor marked a blob": (
        _b64_changed(spec.META_BLOBS, lambda b: b.__setitem__(0, 0x7F)), FormatError, "marked as floatzip.s but"),
    "a blob marked plain": (
        _b64_changed(spec.META_BLOBS, lambda b: b.__setitem__(0, 0)), IntegrityError, "original header does not match"),
    "no checksums": (lambda d: _meta(d).pop(spec.META_CRCS), FormatError, "floatzip.crcs"),
    "checksums truncated": (_b64_changed(spec.META_CRCS, lambda b: b.pop()), FormatError, "floatzip.crcs"),
    "a tensor's checksum changed": (
        _b64_changed(spec.META_CRCS, lambda b: b.__setitem__(0, b[0] ^ 1)), IntegrityError, "checksum mismatch"),
    "a tensor renamed": (_rename_first, IntegrityError, "original header does not match its checksum"),
}  # fmt: skip


@pytest.mark.parametrize("attack", sorted(V3_ATTACKS))
def test_crafted_v3_records_are_one_error(compressed: Path, attack: str) -> None:
    change, error, message = V3_ATTACKS[attack]
    rewrite_header(compressed / "model.safetensors", change)
    with pytest.raises(error, match=message):
        verify_checkpoint(compressed)


def test_a_blob_header_naming_no_dtype_is_caught_before_the_original_header_is_rebuilt(compressed: Path) -> None:
    from floatzip.format.checkpoint import open_compressed

    path = compressed / "model.safetensors"
    cf = open_compressed(path)
    first = next(e for e in cf.header.entries if e.name in cf.encoded)
    data = bytearray(path.read_bytes())
    data[cf.header.data_start + first.begin + 6] = 99  # the blob's dtype code
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=rf"tensor {first.name!r}: bad blob header"):
        verify_checkpoint(compressed)


def test_a_header_nested_100000_deep_is_one_error(compressed: Path) -> None:
    path = compressed / "model.safetensors"
    raw = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(FormatError, match="nests too deep"):
        verify_checkpoint(compressed)


def test_too_many_tensors_for_one_header_names_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a million tiny tensors once made a header floatzip's own reader then refused, naming a temporary file;
    # the same limit, scaled down, is now checked before writing and names the source
    import torch
    from safetensors.torch import save_file

    from floatzip.format import safetensors_io

    src = tmp_path / "many.safetensors"
    save_file({f"t{i}": torch.zeros(2) for i in range(300)}, src)
    monkeypatch.setattr(safetensors_io, "MAX_HEADER_BYTES", 20_000)
    with pytest.raises(InputError, match=r"many\.safetensors: 300 tensors need a safetensors header"):
        compress_checkpoint(src, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.safetensors"]
