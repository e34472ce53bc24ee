"""floatzip vs ZipNN vs DFloat11 on the CPU, same data, same run (the logic lives in floatzip.bench).

python benchmarks/codec_cpu.py [--quick] [--json] [--synthetic-mb N] [--repeats N]
"""

from __future__ import annotations

import argparse
import json

from floatzip.bench import format_results, run_bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few MB only (smoke test)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--synthetic-mb", type=int, default=256, help="size of the synthetic set (0: none)")
    p.add_argument("--repeats", type=int, default=None, help="rounds per tool (best is reported)")
    a = p.parse_args()
    result = run_bench(quick=a.quick, synthetic_mb=a.synthetic_mb, json_out=a.json, repeats=a.repeats)
    print(json.dumps(result, indent=1) if a.json else format_results(result))


if __name__ == "__main__":
    main()
