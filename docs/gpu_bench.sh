#!/usr/bin/env bash
# The GPU timings docs/PERFORMANCE.md asks for, as one call of under 5 minutes on one H100 (random weights, bf16):
# the paper's sampling eager, the guidance-distilled student at 8/6/4 steps against its 25-step teacher, diffusers'
# AnimateDiffPipeline in the same run, then torch.compile of the blocks, of the whole denoiser and of the whole
# denoiser with CUDA graphs; peak VRAM in every row. Each bench saves its JSON after every part, so a call cut short
# keeps what it measured. Usage, from the repository root: OUT=results bash docs/gpu_bench.sh
set -uo pipefail
OUT=${OUT:-gpu_bench_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1
python -c "import loopy_core" 2>/dev/null || pip install -q -e . >"$OUT/pip.log" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/gpu.txt" 2>&1
bench() { python -m loopy_core.cli bench --config sd15 --device cuda --dtype bf16 "$@"; }
timeout 110 bench --steps 25 --only clip,distilled,animatediff --json "$OUT/sampling.json" >"$OUT/sampling.txt" 2>&1
timeout 160 bench --steps 25 --only clip,compile_denoiser,compile_cudagraphs,compile --json "$OUT/compile.json" \
  >"$OUT/compile.txt" 2>&1
tail -n 30 "$OUT"/sampling.txt "$OUT"/compile.txt
