#!/usr/bin/env bash
# Every GPU check, in one command, for a lent GPU machine (see ../shared/DESIGN.md: minutes at a time).
# Run from the repository root:
#
#     bash benchmarks/gpu_run.sh            # writes its results under $OUT (or ./gpu-out)
#
# 1. builds the compiled core against the machine's own Python (its image has scikit-build-core, nanobind,
#    cmake and ninja; nothing is downloaded);
# 2. the GPU tests (the real kernel against the CPU, bit for bit; CUDA-graph replay of the decoder and of a model,
#    torch.compile(mode="reduce-overhead"));
# 3. benchmarks/gpu_decode.py: floatzip's kernel, a device copy (the ceiling) and, when the dfloat11 and
#    dahuffman wheels were carried in .whl/ (pip download --no-deps dfloat11==0.5.0 dahuffman==0.4.2), DFloat11's
#    own kernel, on 16 MB to 1 GB tensors and a Llama-8B block;
# 4. benchmarks/gpu_gemv.py: the fused decode-GEMV against torch's BF16 matmul on Llama-3.1-8B shapes, batch 1
#    and 8, with the default tiles and 256 symbols per lane (its kernel checked against the host twin first);
# 5. ncu on one decode launch: L1 hit rate, pipe utilisation, achieved bandwidth.
# Ends within GPU_RUN_SECONDS (default 470 s, inside the 8-minute slot): each step's timeout is cut to the time
# left, and a step with under 20 s left is skipped, saying so (the steps are in order of importance).
set -uo pipefail
DEADLINE=${GPU_RUN_SECONDS:-470}
step() {  # step SECONDS COMMAND...: run COMMAND with at most SECONDS, and never past the deadline
  local t=$1 left=$((DEADLINE - SECONDS))
  shift
  if ((left < 20)); then
    echo "skipped, out of time: $*"
    return 0
  fi
  ((t > left)) && t=$left
  timeout "$t" "$@"
}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
step 240 python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -3 | tee "$OUT/build.txt"
step 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/decode/test_cuda.py tests/decode/test_gemv.py 2>&1 | tail -15 | tee "$OUT/tests.txt"
# the runtime under torch.cuda.graph and torch.compile(mode="reduce-overhead"), bit for bit against eager BF16
# (tests/runtime needs transformers: without it the whole folder is skipped, which the output says)
step 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/runtime/test_cuda_graphs.py 2>&1 | tail -15 \
  | tee "$OUT/tests_graphs.txt"
step 300 python3 benchmarks/gpu_decode.py --json "$OUT/gpu_decode.json" 2>&1 | tee "$OUT/gpu_decode.txt"
step 150 python3 benchmarks/gpu_gemv.py --iters 30 --json "$OUT/gpu_gemv.json" 2>&1 | tee "$OUT/gpu_gemv.txt"
step 120 python3 benchmarks/gpu_gemv.py --iters 30 --steps 32 --json "$OUT/gpu_gemv_256.json" 2>&1 \
  | tee "$OUT/gpu_gemv_256.txt"
if command -v ncu > /dev/null; then
  step 120 ncu --clock-control none -k regex:decode_kernel -c 2 \
    --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,l1tex__t_sector_hit_rate.pct,sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum \
    python3 benchmarks/gpu_decode.py --quick --no-block --no-variants --no-dfloat11 --iters 1 --warmup 0 \
    2>&1 | tail -40 | tee "$OUT/ncu.txt"
fi
