"""How fast the fused decode-GEMV can be against cuBLAS's BF16 GEMV, judged from its compiled code (no GPU).

    python benchmarks/gemv_model.py [--arch sm_90a] [--json FILE] [--sass DIR]

Compiles the GEMV kernel (src/floatzip/csrc/fz_gemv.cu) for BF16 weights as trained models code them (raw
width 4, codes up to 16 bits, rows a multiple of 1024: path 2) at 1, 2, 4 and 8 rows of X, reads its SASS with
benchmarks/gpu_model.py's parser, and splits the inner loop (one block of 4 steps: 32 weights per lane) into

* hot: every instruction of the loop except the two kinds below;
* row end: the blocks holding the warp's butterfly (SHFL, FADD) that close a row, run once every in / 1024
  iterations, so amortised by 1024 / in;
* cold: the out-of-line long-code calls (0.22% of MiniLM's symbols), left out as in gpu_model.py.

Per weight, a pipe model (Hopper SM, per clock):

    weights / clock / SM = min(128 / instructions,      issue: 4 schedulers x 32 lanes
                               64 / ALU ops,            integer ALU (LOP3, SHF, ISETP, SEL, IADD3, LEA, ...)
                               64 / IMAD-pipe ops,      IMAD (IMAD.WIDE twice), VIADD: the fmaheavy pipe only
                               128 / (IMAD + FP32) ops, FFMA/FADD share fmaheavy and fmalite with IMAD
                               32 / MIO ops)            LDS, LDG, STG, SHFL
    x  occupancy factor = min(1, warps per SM / 12)     ASSUMPTION: a lane is one dependent chain (two table
                                                        lookups per pair, ~23-cycle LDS + ~6 dependent ALU ops
                                                        each), ~0.4 instructions per clock per warp, so a
                                                        scheduler needs ~3 warps to issue every clock
    warps per SM = min(resident (registers), tiles / SMs)

    fused weights/s = min(compute, memory: bandwidth x 0.9 / (2 x ratio) bytes per weight)
    BF16 GEMV       = bandwidth x 0.9 / 2 bytes per weight (cuBLAS at batch 1-8 is memory-bound; X is tiny)
    speed-up        = fused / BF16 (tokens/s of the Linear layers, which dominate batch-1 decoding)

Shapes: Llama-3.1-8B's Linear layers (4096x4096 q/o, 1024x4096 k/v, 14336x4096 gate/up, 4096x14336 down),
each with the default tile (1024 symbols per lane; ratio 0.661) and with 256 symbols per lane (4x the tiles;
ratio 0.664 by docs/FORMAT.md §1.6's measurement). Until a GPU measures the kernel, this is how floatzip judges it.
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_model  # the SASS parser and the GPUs, beside this script

from floatzip.decode import _nvrtc

LLAMA_8B = {"q/o 4096x4096": (4096, 4096), "k/v 1024x4096": (1024, 4096), "gate/up 14336x4096": (14336, 4096),
            "down 4096x14336": (4096, 14336)}  # fmt: skip
LAYER_COUNTS = {"q/o 4096x4096": 2, "k/v 1024x4096": 2, "gate/up 14336x4096": 2, "down 4096x14336": 1}
LANE_SYMBOLS = {1024: 0.661, 256: 0.664}  # symbols per lane -> blob bytes per BF16 byte (FORMAT.md §1.6)
BATCHES = (1, 2, 4, 8)
WARPS_FOR_FULL_ISSUE = 12  # the occupancy assumption above
FP32 = {"FFMA", "FADD", "FMUL"}
IMAD = {"IMAD", "VIADD", "IMUL"}


def split_loop(ins: list[tuple[int, str]]) -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {"hot": [], "row_end": [], "cold": []}
    for block in gpu_model.loop_blocks(ins):
        ops = {gpu_model.opcode(t) for _, t in block}
        kind = "cold" if "CALL" in ops else "row_end" if ops & {"SHFL", "FADD"} else "hot"
        parts[kind] += [t for _, t in block]
    return parts


def per_weight(texts: list[str], weights: int) -> dict[str, float]:
    c: dict[str, float] = collections.Counter()
    for t in texts:
        op = gpu_model.opcode(t)
        p = gpu_model.pipe(op, t)
        c["instructions"] += 1
        wide = 2.0 if (op == "IMAD" and ".WIDE" in t) else 1.0
        if op in FP32:
            c["fp32"] += 1
        elif op in IMAD:
            c["imad"] += wide
        elif p == "alu":
            c["alu"] += 1
        elif p == "mio":
            c["mio"] += 1
        if op in ("LDG", "LDS"):
            c[op.lower()] += 1
    return {k: v / weights for k, v in c.items()}


def analyse(arch: str, sass_dir: Path | None) -> dict[str, object]:
    names = {nb: _nvrtc.gemv_kernel_name(4, True, nb, False, 2) for nb in BATCHES}
    compiled = _nvrtc.compile_gemv(arch, list(names.values()))
    res = compiled.resources()
    kernels: dict[int, dict[str, object]] = {}
    for nb, expr in names.items():
        mangled = compiled.names[expr]
        ins = gpu_model.sass(compiled.cubin, mangled)
        if sass_dir is not None:
            sass_dir.mkdir(parents=True, exist_ok=True)
            safe = re.sub(r"[^A-Za-z0-9]+", "_", expr).strip("_")
            (sass_dir / f"{arch}_{safe}.sass").write_text("\n".join(f"{a:05x}  {t}" for a, t in ins) + "\n")
        parts = split_loop(ins)
        weights = sum(1 for t in parts["hot"] if gpu_model.opcode(t) == "LDS")  # one table lookup per weight
        r = res[mangled]
        kernels[nb] = {
            "name": expr,
            "registers": r["registers"],
            "spills": r["spill_stores"] + r["spill_loads"],
            "resident_warps_per_sm": gpu_model.occupancy(r["registers"], r["smem"]),
            "weights_per_iteration": weights,
            "hot_instructions": len(parts["hot"]),
            "row_end_instructions": len(parts["row_end"]),
            "cold_instructions": len(parts["cold"]),
            "hot": per_weight(parts["hot"], weights),
            "row_end": per_weight(parts["row_end"], weights),
            "by_op": dict(collections.Counter(gpu_model.opcode(t) for t in parts["hot"]).most_common()),
        }
    estimates = []
    for gpu, g in gpu_model.GPUS.items():
        bf16 = g["tbps"] * 1e12 * gpu_model.MEMORY_EFFICIENCY / 2
        for lane_symbols, ratio in LANE_SYMBOLS.items():
            for nb in BATCHES:
                k = kernels[nb]
                total_w = 0.0
                total_t_fused = 0.0
                rows_out = []
                for shape, (out_f, in_f) in LLAMA_8B.items():
                    amort = 1024 / in_f
                    hot, end = k["hot"], k["row_end"]
                    assert isinstance(hot, dict) and isinstance(end, dict)
                    per = {key: hot.get(key, 0.0) + amort * end.get(key, 0.0) for key in
                           ("instructions", "alu", "imad", "fp32", "mio")}  # fmt: skip
                    bounds = {
                        "issue": 128 / per["instructions"],
                        "alu": 64 / per["alu"],
                        "imad": 64 / per["imad"] if per["imad"] else float("inf"),
                        "fma": 128 / (per["imad"] + per["fp32"]),
                        "mio": 32 / per["mio"],
                    }
                    bound_by = min(bounds, key=bounds.__getitem__)
                    tiles = out_f * in_f / (32 * lane_symbols)  # a tile: 32 lanes x lane_symbols weights
                    resident = k["resident_warps_per_sm"]
                    assert isinstance(resident, int)
                    warps = min(float(resident), tiles / g["sms"])
                    occ = min(1.0, warps / WARPS_FOR_FULL_ISSUE)
                    compute = bounds[bound_by] * occ * g["sms"] * g["ghz"] * 1e9
                    memory = g["tbps"] * 1e12 * gpu_model.MEMORY_EFFICIENCY / (2 * ratio)
                    fused = min(compute, memory)
                    n_w = out_f * in_f * LAYER_COUNTS[shape]
                    total_w += n_w
                    total_t_fused += n_w / fused
                    rows_out.append({
                        "shape": shape, "instructions_per_weight": round(per["instructions"], 2),
                        "alu_per_weight": round(per["alu"], 2), "bound_by": bound_by if compute < memory else "memory",
                        "warps_per_sm": round(warps, 1), "occupancy_factor": round(occ, 2),
                        "speedup_vs_bf16": round(fused / bf16, 3),
                    })  # fmt: skip
                estimates.append({"gpu": gpu, "lane_symbols": lane_symbols, "ratio": ratio, "batch": nb,
                                  "shapes": rows_out,
                                  "layer_speedup_vs_bf16": round((total_w / total_t_fused) / bf16, 3)})  # fmt: skip
    return {
        "arch": arch,
        "nvrtc": ".".join(map(str, _nvrtc.version())),
        "model": {
            "gpus": gpu_model.GPUS,
            "memory_efficiency": gpu_model.MEMORY_EFFICIENCY,
            "warps_for_full_issue": WARPS_FOR_FULL_ISSUE,
            "lane_symbols_ratio": LANE_SYMBOLS,
        },
        "kernels": {str(nb): k for nb, k in kernels.items()},
        "estimates": estimates,
    }


def table(doc: dict[str, object]) -> str:
    lines = [f"fused GEMV kernels, {doc['arch']} (NVRTC {doc['nvrtc']}): per weight, inner loop",
             f"{'kernel':<44} {'regs':>4} {'warps':>5} {'spill':>5} {'instr':>6} {'ALU':>5} {'IMAD':>5} {'FP32':>5} "
             f"{'MIO':>5} {'row-end instr/iter':>18}"]  # fmt: skip
    kernels = doc["kernels"]
    assert isinstance(kernels, dict)
    for k in kernels.values():
        h = k["hot"]
        lines.append(f"{k['name']:<44} {k['registers']:>4} {k['resident_warps_per_sm']:>5} {k['spills']:>5} "
                     f"{h.get('instructions', 0):>6.2f} {h.get('alu', 0):>5.2f} {h.get('imad', 0):>5.2f} "
                     f"{h.get('fp32', 0):>5.2f} {h.get('mio', 0):>5.2f} {k['row_end_instructions']:>18}")  # fmt: skip
    lines.append("")
    lines.append(f"{'gpu':<5} {'lane':>5} {'batch':>5} " + " ".join(f"{s:>20}" for s in LLAMA_8B) + f" {'layers':>7}")
    estimates = doc["estimates"]
    assert isinstance(estimates, list)
    for e in estimates:
        cells = [f"{s['speedup_vs_bf16']:.2f}x {s['bound_by']}/{s['warps_per_sm']:.0f}w" for s in e["shapes"]]
        lines.append(f"{e['gpu']:<5} {e['lane_symbols']:>5} {e['batch']:>5} " + " ".join(f"{c:>20}" for c in cells)
                     + f" {e['layer_speedup_vs_bf16']:>6.2f}x")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return gpu_model.run_cli(__doc__, analyse, table, argv)


if __name__ == "__main__":
    sys.exit(main())
