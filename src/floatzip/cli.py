"""The ``floatzip`` command: one function per verb.

A FloatzipError (or an OSError such as a full disk) becomes one line on stderr and exit status 2;
nothing is left half-written, because every writer stages its output and renames it at the end.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from floatzip.errors import FloatzipError, InputError


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def cmd_compress(args: argparse.Namespace) -> int:
    from floatzip.convert.df11 import is_df11_checkpoint
    from floatzip.format.checkpoint import compress_checkpoint

    if is_df11_checkpoint(args.src):
        raise InputError(f"{args.src}: a DFloat11 (DF11) checkpoint, already compressed; "
                         f"floatzip convert {args.src} {args.dst} turns it into a floatzip checkpoint")  # fmt: skip
    if not 0 <= args.max_tables <= 16:
        raise InputError(f"--max-tables {args.max_tables}: must be from 0 (as many as pay) to 16")
    r = compress_checkpoint(args.src, args.dst, steps=args.steps, max_tables=args.max_tables, progress=not args.quiet)
    encoded = sum(t.encoded for t in r.tensors)
    grouped = sum(t.grouped for t in r.tensors)
    coded = f"{encoded} of {len(r.tensors)} tensors entropy-coded" + (
        f", {grouped} small ones in groups" if grouped else ""
    )
    print(f"compressed {args.src} -> {args.dst}")
    print(_table([
        ("files", f"{r.files} ({coded})"),
        ("original", _size(r.original_bytes)),
        ("compressed", _size(r.compressed_bytes)),
        ("ratio", f"{100 * r.ratio:.2f}%"),
        ("time", f"{r.seconds:.2f} s (verified)"),
        ("speed", f"{r.mb_per_s:.1f} MB/s"),
    ]))  # fmt: skip
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from floatzip.convert.df11 import convert_df11

    r = convert_df11(args.src, args.dst, model_config=args.model_config, steps=args.steps,
                     progress=not args.quiet)  # fmt: skip
    print(f"converted DF11 {args.src} -> floatzip {args.dst}: the weights DF11 stores, bit for bit")
    print("  (DF11 keeps no checksums: a corrupt DF11 file is caught only where its codes do not decode; the")
    print("  floatzip checkpoint carries checksums from here on)")
    print(_table([
        ("weights", f"{r.weights_decoded} decoded from DF11 ({r.files} files written)"),
        ("BF16", f"{_size(r.bf16_bytes)} of tensors"),
        ("DF11", f"{_size(r.df11_bytes)} of tensors = {100 * r.df11_ratio:.2f}% of BF16"),
        ("floatzip", f"{_size(r.tensor_ratio * r.bf16_bytes)} of tensors = {100 * r.tensor_ratio:.2f}% of BF16 "
                     f"({_size(r.compressed_bytes)} in files with their headers)"),
        ("time", f"{r.seconds:.2f} s (decode, compress, verify)"),
        ("speed", f"{r.bf16_bytes / r.seconds / 1e6 if r.seconds else 0.0:.1f} MB/s of BF16"),
    ]))  # fmt: skip
    return 0


def cmd_decompress(args: argparse.Namespace) -> int:
    from floatzip.format.checkpoint import decompress_checkpoint

    r = decompress_checkpoint(args.src, args.dst, progress=not args.quiet)
    print(f"restored {r.files} files ({_size(r.original_bytes)}) into {args.dst}; every sha256 matches the original")
    print(_table([("time", f"{r.seconds:.2f} s"), ("speed", f"{r.mb_per_s:.1f} MB/s")]))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from floatzip.format.checkpoint import verify_checkpoint

    r = verify_checkpoint(args.path, progress=not args.quiet)
    print(f"OK: {r.files} files, {_size(r.original_bytes)} restore bit for bit (every checksum matches)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from floatzip.inspect import format_table, inspect_path, plot

    ins = inspect_path(args.path, model_config=args.model_config, progress=not args.quiet)
    if args.plot:
        plot(ins, args.plot)
    if args.json:
        print(ins.to_json())
    else:
        print(format_table(ins, None if args.all else 40))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from floatzip.demo import run_demo

    print("floatzip demo: all-MiniLM-L6-v2 (real trained weights) cast to BF16, compressed, verified, restored,")
    print("and run straight from the compressed checkpoint")
    r = run_demo(args.keep, progress=not args.quiet)
    mb = r.original_bytes / 1e6
    print(_table([
        ("files", str(r.files)),
        ("original (BF16)", _size(r.original_bytes)),
        ("compressed", _size(r.compressed_bytes)),
        ("ratio", f"{100 * r.ratio:.2f}%"),
        ("compress", f"{r.compress_s:.2f} s ({mb / r.compress_s:.1f} MB/s, includes a full verify)"),
        ("verify", f"{r.verify_s:.2f} s ({mb / r.verify_s:.1f} MB/s)"),
        ("decompress", f"{r.decompress_s:.2f} s ({mb / r.decompress_s:.1f} MB/s)"),
        ("bit-exact", "yes: every restored file has the original's sha256" if r.identical else "NO"),
        ("run compressed", {None: "skipped (transformers is not installed)",
                            True: "yes: MiniLM run straight from the compressed checkpoint gives bit-identical "
                                  "embeddings",
                            False: "NO: the embeddings differ"}[r.embeddings_identical]),
        *[(f"  {k}", f"{_size(b)} of weights in memory, {1e3 * s:.1f} ms per forward (2 sentences)")
          for k, (b, s) in (r.run or {}).items()],
    ]))  # fmt: skip
    if r.run:
        print("(per unit: the compressed weights and one decode buffer as large as one layer, each layer decoded on\n"
              " every forward, which the CPU does far slower than the GPU kernel is meant to, the embeddings only in\n"
              " the rows looked up; auto: cpu_strategy's default, which decodes every weight once at load when the\n"
              " decoded model fits the memory available, and then runs at the plain model's speed)")  # fmt: skip
    if args.keep:
        print(f"files kept in {args.keep}")
    return 0 if r.identical and r.embeddings_identical is not False else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from floatzip.bench import format_results, run_bench

    results = run_bench(quick=args.quick)
    print(json.dumps(results, indent=1) if args.json else format_results(results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from floatzip import __version__

    p = argparse.ArgumentParser(prog="floatzip", description="Lossless compression of LLM weights, bit for bit.")
    p.add_argument("--version", action="version", version=f"floatzip {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    c = sub.add_parser("compress", help="compress a .safetensors file or a model directory")
    c.add_argument("src", type=Path)
    c.add_argument("dst", type=Path, help="new directory for the compressed checkpoint")
    c.add_argument("--steps", type=int, default=None, help="steps per tile (docs/FORMAT.md §1.4; default: per dtype)")
    c.add_argument("--max-tables", type=int, default=0, metavar="N",
                   help="code tables per tensor, 1-16 (default 0: as many as pay; 1 compresses faster)")  # fmt: skip
    c.set_defaults(run=cmd_compress)

    cv = sub.add_parser("convert", help="turn a DFloat11 (DF11) checkpoint into a floatzip one, bit for bit")
    cv.add_argument("src", type=Path, help="a DF11 checkpoint directory (or its one .safetensors file)")
    cv.add_argument("dst", type=Path, help="new directory for the floatzip checkpoint")
    cv.add_argument("--steps", type=int, default=None, help="steps per tile (docs/FORMAT.md §1.4; default: per dtype)")
    cv.set_defaults(run=cmd_convert)

    d = sub.add_parser("decompress", help="restore the original files, byte for byte")
    d.add_argument("src", type=Path)
    d.add_argument("dst", type=Path, help="new directory for the restored files")
    d.set_defaults(run=cmd_decompress)

    v = sub.add_parser("verify", help="decode everything and check every checksum")
    v.add_argument("path", type=Path)
    v.set_defaults(run=cmd_verify)

    i = sub.add_parser("inspect", help="per-tensor dtype, shape, exponent entropy, bits/weight and ratio")
    i.add_argument("path", type=Path, help="a floatzip checkpoint, a model directory or a .safetensors file")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the exponent histogram and per-tensor ratio")
    i.add_argument("--all", action="store_true", help="list every tensor (default: the first 40)")
    for sp in (cv, i):
        sp.add_argument("--model-config", type=Path, metavar="CONFIG",
                        help="DF11: the original model's config.json, if the DF11 checkpoint has none")  # fmt: skip
    i.set_defaults(run=cmd_inspect)

    m = sub.add_parser("demo", help="compress, verify and restore all-MiniLM-L6-v2 in BF16 (offline)")
    m.add_argument("--keep", type=Path, metavar="DIR", help="keep the files in DIR")
    m.set_defaults(run=cmd_demo)

    b = sub.add_parser("bench", help="floatzip vs ZipNN vs DFloat11 on the CPU, same data, same run")
    b.add_argument("--json", action="store_true")
    b.add_argument("--quick", action="store_true", help="a small data set, for a smoke test")
    b.set_defaults(run=cmd_bench)

    for sp in (c, cv, d, v, m, i):
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


class _Terminated(BaseException):
    """SIGTERM (what timeout, docker and systemd send), raised so that staged outputs are removed."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        return int(args.run(args))
    except _Terminated:
        print("floatzip: terminated (SIGTERM); nothing was left half-written", file=sys.stderr)
        return 128 + signal.SIGTERM
    except FloatzipError as exc:
        print(f"floatzip: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"floatzip: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("floatzip: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
