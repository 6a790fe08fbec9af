#!/usr/bin/env bash
# One GPU session of the step benchmarks: CUDA tests of the step and the renderer, then benchmarks/gpu_step.py
# eager and compiled (the whole PaKAModel, as torch_compile: true in Trainer), ViT-S/14 and ViT-B/14, each
# with the full step from rendered views and from uint8 images (views rendered on the device), the
# bare+heads baseline and the breakdown of what the full step adds; then the ATen ops the full step adds
# under CUDA's autocast rules, at batch 64 (benchmarks/step_ops.py, seconds). Writes JSON and logs to $OUT
# (default: ./gpu_out). Then NeCo's full step beside PaKA's, ViT-S/14, in one gpu_step.py run (neco.json),
# and the LoRA student's step and peak memory beside full post-training's, ViT-S/14 and ViT-B/14 (lora.json).
# First of all, FSDP2 on the one GPU (world size 1): the persistent memory of a sharded ViT-S/14 and ViT-B/14 step
# beside benchmarks/memory_plan.py's prediction, and the peak (benchmarks/fsdp_memory.py, fsdp_memory.json).
#   bash benchmarks/device_suite.sh            # on the GPU machine, at most ~10 minutes
#   bash benchmarks/device_suite.sh --fsdp     # the FSDP2 step alone (~1 minute), e.g. as a second call
#   bash benchmarks/device_suite.sh --smoke    # the same sequence with tiny shapes, on CPU, seconds
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if [ "${1:-}" = "--smoke" ]; then FSDP=(--smoke --device cpu); else FSDP=(--models s14 b14); fi
timeout 90 $PY benchmarks/fsdp_memory.py "${FSDP[@]}" --json "$OUT/fsdp_memory.json" 2>&1 | tee "$OUT/fsdp_memory.log"
if [ "${1:-}" = "--fsdp" ]; then exit 0; fi
if [ "${1:-}" = "--smoke" ]; then
  EXTRA=(--smoke --device cpu); BUDGET_EAGER=60; BUDGET_COMPILE=60; COMPILE=(--compile --compile_backend aot_eager)
  BUDGET_NECO=60; NECO_MODELS=(--no_breakdown)  # the breakdown is checked by gpu_step's own smoke test
  LORA_MODELS=(--no_breakdown)
else
  EXTRA=(); BUDGET_EAGER=100; BUDGET_COMPILE=190; COMPILE=(--compile)
  BUDGET_NECO=90; NECO_MODELS=(--models s14); LORA_MODELS=(--models s14 b14 --no_breakdown)
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia_smi.txt"
  timeout 45 $PY -m pytest -q -p no:cacheprovider tests/test_views_device_rendering.py tests/test_benchmarks_gpu_step.py -k "cuda" 2>&1 | tail -5 | tee "$OUT/cuda_tests.txt"
fi
timeout $((BUDGET_EAGER + 30)) $PY benchmarks/gpu_step.py "${EXTRA[@]}" --view_rendering cpu device --profile_render \
  --time_budget $BUDGET_EAGER --json "$OUT/eager.json" 2>&1 | tee "$OUT/eager.log"
timeout $((BUDGET_COMPILE + 45)) $PY benchmarks/gpu_step.py "${EXTRA[@]}" "${COMPILE[@]}" --view_rendering cpu device \
  --time_budget $BUDGET_COMPILE --json "$OUT/compiled.json" 2>&1 | tee "$OUT/compiled.log"
# If compiling the whole model failed on this machine's torch, measure the backbones-only compile instead.
if $PY -c "import json, sys; r = json.load(open(sys.argv[1]))['results']; sys.exit(0 if r and any('error' in x for x in r) else 1)" "$OUT/compiled.json" 2>/dev/null; then
  timeout $((BUDGET_COMPILE + 45)) $PY benchmarks/gpu_step.py "${EXTRA[@]}" "${COMPILE[@]}" --compile_scope backbones \
    --view_rendering cpu device --time_budget $BUDGET_COMPILE --json "$OUT/compiled_backbones.json" 2>&1 | tee "$OUT/compiled_backbones.log"
fi
# NeCo's step beside PaKA's: ViT-S/14, eager, the same views, NeCo's published loss settings.
timeout $((BUDGET_NECO + 30)) $PY benchmarks/gpu_step.py "${EXTRA[@]}" "${NECO_MODELS[@]}" --loss cka neco --no_sync_check \
  --time_budget $BUDGET_NECO --json "$OUT/neco.json" 2>&1 | tee "$OUT/neco.log"
# LoRA's step beside full post-training's: ViT-S/14 and ViT-B/14, eager, the same views; peak memory.
timeout $((BUDGET_NECO + 30)) $PY benchmarks/gpu_step.py "${EXTRA[@]}" "${LORA_MODELS[@]}" --loss cka cka_lora --no_sync_check \
  --time_budget $BUDGET_NECO --json "$OUT/lora.json" 2>&1 | tee "$OUT/lora.log"
# What the full step runs beyond the bare step under CUDA's autocast rules, at the benchmark's batch (seconds).
if [ "${1:-}" = "--smoke" ]; then OPS=(--smoke --device cpu); else OPS=(--batch 64 --models s14 b14); fi
timeout 90 $PY benchmarks/step_ops.py "${OPS[@]}" 2>&1 | tee "$OUT/step_ops.log"
