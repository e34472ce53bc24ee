"""How fast the decode kernel can be, judged from its compiled code (no GPU needed).

    python benchmarks/gpu_model.py [--arch sm_90a] [--json FILE] [--sass DIR]

Compiles every specialisation of the decode kernel with NVRTC, disassembles it (cuobjdump, from the
``nvidia-cuda-cuobjdump`` wheel), finds the inner loop (the longest backward branch) and its hot path
(the loop minus the out-of-line long-code calls, taken by 0.22% of MiniLM's symbols), and counts what
one decoded symbol costs: instructions by pipe, memory operations, registers, occupancy. A pipe model
turns that into an estimate:

    symbols / clock / SM = min(128 / instructions,      4 schedulers x 1 warp-instruction x 32 lanes
                               64 / ALU ops,            integer ALU: LOP3, SHF, ISETP, SEL, IADD3, LEA, PRMT, MOV...
                               64 / FMA-pipe ops,       IMAD* (IMAD.WIDE counts twice), VIADD
                               32 / MIO ops)            LDS, LDG, STG, shuffles (one warp-instruction per clock)
    compute TB/s = that x SMs x clock x output bytes per symbol
    memory TB/s  = bandwidth x efficiency x out / (out + in),  in = the blob's bytes per symbol
    estimate     = min(compute, memory)

H100 SXM: 132 SMs at 1.98 GHz, 3.35 TB/s; H200: 132 SMs at 1.98 GHz, 4.8 TB/s; efficiency 0.9 (what a
device copy reaches: 4.3 of 4.8 TB/s on an H200 here). The ALU/FMA split of VIADD and MOV is this model's
assumption, not a measurement. Until a GPU measures the kernel, this is how floatzip judges it.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from floatzip.decode import _nvrtc

GPUS = {"h100": {"sms": 132, "ghz": 1.98, "tbps": 3.35}, "h200": {"sms": 132, "ghz": 1.98, "tbps": 4.8}}
MEMORY_EFFICIENCY = 0.9
RATIO = 0.661  # the blob's bytes per original byte on real BF16 weights (MiniLM-L6-v2, format v2)

ALU = {"LOP3", "SHF", "ISETP", "SEL", "IADD3", "LEA", "PRMT", "MOV", "P2R", "R2P", "PLOP3", "IMNMX", "FLO", "POPC",
       "BMSK", "SGXT", "LOP", "IABS", "ICMP", "CS2R"}  # fmt: skip
FMA = {"IMAD", "VIADD", "FFMA", "FADD", "FMUL", "IMUL"}
MIO = {"LDS", "LDG", "STG", "STS", "SHFL", "LDL", "STL", "ATOMS", "ATOMG", "LD", "ST", "LDSM", "VOTE"}
CONTROL = {"BRA", "BSSY", "BSYNC", "CALL", "RET", "EXIT", "WARPSYNC", "BAR", "NOP", "YIELD", "BREAK"}


@dataclass
class Loop:
    kernel: str
    instructions: int  # hot-path instructions per loop iteration
    symbols: int  # symbols decoded per iteration (one primary-table lookup, LDS, each)
    by_op: dict[str, int]
    by_pipe: dict[str, float]
    cold: int  # instructions of the out-of-line paths inside the loop (not counted above)
    stored: int = 0  # bytes each lane stores per iteration (its STGs' widths): elements x the dtype's size


@dataclass
class Kernel:
    name: str
    registers: int
    spills: int
    stack: int
    smem: int
    warps_per_sm: int
    loop: Loop | None
    per_symbol: dict[str, float] = field(default_factory=dict)
    per_element: dict[str, float] = field(default_factory=dict)  # per decoded element (from the loop's stores)
    estimate: dict[str, float] = field(default_factory=dict)


def tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for base in sys.path:
        hits = glob.glob(os.path.join(base, "nvidia", "cu*", "bin", name))
        if hits:
            return hits[0]
    raise SystemExit(f"gpu_model: {name} not found (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")


def sass(cubin: bytes, mangled: str) -> list[tuple[int, str]]:
    """(address, instruction text) of one kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        # cuobjdump disassembles with nvdisasm, which it looks for on PATH
        env = {**os.environ, "PATH": os.path.dirname(tool("nvdisasm")) + os.pathsep + os.environ.get("PATH", "")}
        out = subprocess.run([tool("cuobjdump"), "-sass", "-fun", mangled, f.name], capture_output=True, text=True,
                             check=True, env=env).stdout  # fmt: skip
    ins = []
    for line in out.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    return ins


def opcode(text: str) -> str:
    body = re.sub(r"^@!?U?P[0-9T]+\s+", "", text)
    return body.split()[0].split(".")[0] if body else ""


def pipe(op: str, text: str) -> str:
    if op.startswith("U") or op == "S2UR":
        return "uniform"
    if op in ALU:
        return "alu"
    if op in FMA:
        return "fma"
    if op in MIO:
        return "mio"
    if op in CONTROL:
        return "control"
    return "other"


def loop_blocks(ins: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
    """The basic blocks of the longest loop (the longest backward branch), split after every branch and at
    every branch target inside it; empty when there is no loop."""
    loops = []
    for addr, text in ins:
        m = re.search(r"\bBRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", text)
        if m and m.group(1) and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    if not loops:
        return []
    head, tail = max(loops, key=lambda lp: lp[1] - lp[0])
    body = [(a, t) for a, t in ins if head <= a <= tail]
    targets = {int(m.group(1), 16) for _, t in body for m in [re.search(r"\bBRA\s+0x([0-9a-f]+)", t)] if m}
    blocks: list[list[tuple[int, str]]] = [[]]
    for a, t in body:
        if a in targets and blocks[-1]:
            blocks.append([])
        blocks[-1].append((a, t))
        if opcode(t) in ("BRA", "EXIT", "RET"):
            blocks.append([])
    return [b for b in blocks if b]


def count_pipes(texts: list[str]) -> dict[str, float]:
    pipes: dict[str, float] = collections.Counter()
    for t in texts:
        op = opcode(t)
        pipes[pipe(op, t)] += 2.0 if (op == "IMAD" and ".WIDE" in t) else 1.0
    return dict(pipes)


def main_loop(ins: list[tuple[int, str]]) -> Loop | None:
    """The longest loop's hot path: basic blocks that hold no CALL (the long-code slow path is a call)."""
    blocks = loop_blocks(ins)
    if not blocks:
        return None
    hot = [t for b in blocks if not any(opcode(t) == "CALL" for _, t in b) for _, t in b]
    cold = sum(len(b) for b in blocks if any(opcode(t) == "CALL" for _, t in b))
    ops = collections.Counter(opcode(t) for t in hot)
    symbols = ops.get("LDS", 0)
    stored = sum(store_bytes(t) for t in hot if opcode(t) == "STG")
    return Loop("", len(hot), symbols, dict(ops.most_common()), count_pipes(hot), cold, stored)


def store_bytes(text: str) -> int:
    """Bytes one lane's STG writes (STG.E: 4, .U8: 1, .U16: 2, .64: 8, .128: 16)."""
    mods = text.split()[0].split(".")[1:] if not text.startswith("@") else text.split()[1].split(".")[1:]
    for m, n in (("128", 16), ("64", 8), ("U16", 2), ("S16", 2), ("U8", 1), ("S8", 1)):
        if m in mods:
            return n
    return 4


def occupancy(registers: int, smem: int, threads: int = 128) -> int:
    """Warps per SM (Hopper: 64K registers allocated per warp in 256s, 228 KB shared, 32 blocks)."""
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = 65536 // per_warp
    warps_per_block = threads // 32
    by_smem = (228 * 1024 // (smem + 1024)) * warps_per_block
    return min(64, by_regs // warps_per_block * warps_per_block, by_smem, 32 * warps_per_block)


def estimate(loop: Loop, out_bytes_per_symbol: float) -> tuple[dict[str, float], dict[str, float]]:
    n = loop.symbols
    per = {
        "instructions": loop.instructions / n,
        "alu": loop.by_pipe.get("alu", 0) / n,
        "fma": loop.by_pipe.get("fma", 0) / n,
        "mio": loop.by_pipe.get("mio", 0) / n,
        "control": loop.by_pipe.get("control", 0) / n,
        "uniform": loop.by_pipe.get("uniform", 0) / n,
        "lds": loop.by_op.get("LDS", 0) / n,
        "ldg": loop.by_op.get("LDG", 0) / n,
        "stg": loop.by_op.get("STG", 0) / n,
    }
    bounds = {
        "issue": 128 / per["instructions"],
        "alu": 64 / per["alu"] if per["alu"] else float("inf"),
        "fma": 64 / per["fma"] if per["fma"] else float("inf"),
        "mio": 32 / per["mio"] if per["mio"] else float("inf"),
    }
    sym_per_clk = min(bounds.values())
    est: dict[str, float] = {"symbols_per_clock_per_sm": sym_per_clk, "bound_by": min(bounds, key=bounds.__getitem__)}  # type: ignore[dict-item]
    est.update({f"{k}_bound_symbols_per_clock": v for k, v in bounds.items()})
    for gpu, g in GPUS.items():
        compute = sym_per_clk * g["sms"] * g["ghz"] * 1e9 * out_bytes_per_symbol / 1e12
        memory = g["tbps"] * MEMORY_EFFICIENCY * 1 / (1 + RATIO)
        est[f"compute_tbps_{gpu}"] = compute
        est[f"memory_tbps_{gpu}"] = memory
        est[f"est_tbps_{gpu}"] = min(compute, memory)
        est[f"limit_{gpu}"] = "memory" if memory <= compute else est["bound_by"]  # type: ignore[assignment]
    return per, est


def analyse(arch: str, sass_dir: Path | None) -> dict[str, object]:
    compiled = _nvrtc.compile_decoder(arch)
    res = compiled.resources()
    kernels = []
    for expr, mangled in compiled.names.items():
        r = res[mangled]
        ins = sass(compiled.cubin, mangled)
        if sass_dir is not None:
            sass_dir.mkdir(parents=True, exist_ok=True)
            safe = re.sub(r"[^A-Za-z0-9]+", "_", expr).strip("_")
            (sass_dir / f"{arch}_{safe}.sass").write_text("\n".join(f"{a:05x}  {t}" for a, t in ins) + "\n")
        loop = main_loop(ins)
        k = Kernel(expr, r["registers"], r["spill_stores"] + r["spill_loads"], r["stack"], r["smem"],
                   occupancy(r["registers"], r["smem"]), loop)  # fmt: skip
        if loop is not None and loop.symbols:
            loop.kernel = expr
            bits = int(expr.split("<")[1].split(",")[0])
            # a symbol is one table lookup (LDS); an F32 element with coded low planes takes 1 + planes of them,
            # and a long code's second decode more: the output per lookup is what the loop stores over its LDSs
            out_per_symbol = loop.stored / loop.symbols if loop.stored else bits // 8
            k.per_symbol, k.estimate = estimate(loop, out_per_symbol)
            if loop.stored:
                elements = loop.stored / (bits // 8)
                k.per_element = {"instructions": loop.instructions / elements,
                                 "alu": loop.by_pipe.get("alu", 0) / elements,
                                 "fma": loop.by_pipe.get("fma", 0) / elements,
                                 "mio": loop.by_pipe.get("mio", 0) / elements,
                                 "lookups": loop.symbols / elements}  # fmt: skip
        kernels.append(k)
    # the decoder of real BF16 weights: raw width 4 (k = 4: MiniLM's split), codes up to 16 bits
    main = next(k for k in kernels if k.name == _nvrtc.decode_kernel_name(16, 4, True))
    decode = {
        "kernel": main.name,
        "instructions_per_symbol": round(main.per_symbol["instructions"], 2),
        "alu_per_symbol": round(main.per_symbol["alu"], 2),
        "fma_per_symbol": round(main.per_symbol["fma"], 2),
        "mio_per_symbol": round(main.per_symbol["mio"], 2),
        "registers": main.registers,
        "warps_per_sm": main.warps_per_sm,
        "compute_bound_by": main.estimate["bound_by"],
        "limit_h100": main.estimate["limit_h100"],
        "limit_h200": main.estimate["limit_h200"],
        "est_tbps_h100": round(main.estimate["est_tbps_h100"], 3),
        "est_tbps_h200": round(main.estimate["est_tbps_h200"], 3),
        "compute_tbps_h100": round(main.estimate["compute_tbps_h100"], 3),
        "compute_tbps_h200": round(main.estimate["compute_tbps_h200"], 3),
        "spills": sum(k.spills for k in kernels),
    }
    return {
        "arch": arch,
        "nvrtc": ".".join(map(str, _nvrtc.version())),
        "model": {"gpus": GPUS, "memory_efficiency": MEMORY_EFFICIENCY, "ratio": RATIO},
        "decode": decode,
        "kernels": [asdict(k) for k in kernels],
    }


def table(doc: dict[str, object]) -> str:
    lines = [f"decode kernels, {doc['arch']} (NVRTC {doc['nvrtc']}): per decoded symbol on the hot path",
             f"{'kernel':<36} {'regs':>4} {'warps':>5} {'spill':>5} {'instr':>6} {'ALU':>5} {'FMA':>5} {'MIO':>5} "
             f"{'bound':>6} {'H100 TB/s':>9} {'H200 TB/s':>9} {'instr/elem':>10}"]  # fmt: skip
    for k in doc["kernels"]:  # type: ignore[attr-defined]
        p, e = k["per_symbol"], k["estimate"]
        if not p:
            continue
        lines.append(f"{k['name']:<36} {k['registers']:>4} {k['warps_per_sm']:>5} {k['spills']:>5} "
                     f"{p['instructions']:>6.2f} {p['alu']:>5.2f} {p['fma']:>5.2f} {p['mio']:>5.2f} {e['bound_by']:>6} "
                     f"{e['est_tbps_h100']:>9.2f} {e['est_tbps_h200']:>9.2f} "
                     f"{k['per_element'].get('instructions', float('nan')):>10.2f}")  # fmt: skip
    d = doc["decode"]
    lines.append(f"main (BF16, raw width 4, 16-bit codes): {d['instructions_per_symbol']} instructions per symbol, "  # type: ignore[index]
                 f"estimate {d['est_tbps_h100']} TB/s on an H100 (compute bound {d['compute_tbps_h100']}), "  # type: ignore[index]
                 f"{d['est_tbps_h200']} on an H200 (compute bound {d['compute_tbps_h200']})")  # type: ignore[index]  # fmt: skip
    return "\n".join(lines)


def run_cli(
    doc_string: str | None,
    analyse_fn: Callable[[str, Path | None], dict[str, object]],
    table_fn: Callable[[dict[str, object]], str],
    argv: list[str] | None = None,
) -> int:
    """The command line of a compiled-code model (this one, gemv_model.py): --arch, --json, --sass."""
    ap = argparse.ArgumentParser(description=doc_string, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--json", type=Path, help="write the analysis here")
    ap.add_argument("--sass", type=Path, help="write each kernel's SASS into this directory")
    args = ap.parse_args(argv)
    doc = analyse_fn(args.arch, args.sass)
    print(table_fn(doc))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(__doc__, analyse, table, argv)


if __name__ == "__main__":
    sys.exit(main())
