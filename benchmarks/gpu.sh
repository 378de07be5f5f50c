#!/usr/bin/env bash
# The GPU benchmark set, prepared for a lent GPU machine (one H200): under 8 minutes in all.
#
#   bash benchmarks/gpu.sh               # on the GPU machine, from anywhere in the checkout
#   DEVICE=cpu bash benchmarks/gpu.sh    # a dry run of the same stages at tiny sizes, any CPU
#
# Stages, each under its own time limit inside one overall budget (BUDGET seconds, 450 by
# default: 7.5 minutes, leaving half a minute of slack to the 8):
#   0. preflight: torch sees the device (a CUDA run never falls back to the CPU), MiniLM and
#      the reviews load offline;                                                  <= 90 s
#   1. server step in bf16: (a)-(c) at batch 32 x 64 tokens, and (d) K = 1 4 16 64 256 clients
#      x 8 samples, each K in ONE mixed pass, against K separate PEFT LoRA steps; time and
#      peak memory (torch.cuda.max_memory_allocated); a K predicted to end past the stage's
#      budget is skipped and listed                       -> server_step_cuda.json, <= 240 s
#   2. server step in fp32, (a)-(c) only (skipped if less than 5 minutes are left)
#                                                          -> server_step_cuda_fp32.json, <= 90 s
#   3. sizing: the ColA server step of MiniLM-L6 and SmolLM2-135M in bf16 at 8x the
#      simulations' batches (a GPU needs large passes), counted FLOPs over measured time: the
#      GPU throughput docs/operations.md's sizing table assumes       -> sizing_cuda.json, <= 90 s
#   4. multi-GPU scale: MiniLM-L6 with 32 nodes on the Ray pool, one worker per GPU
#      (server.engine = "ray", server.workers = the GPUs nvidia-smi lists,
#      server.gpus-per-worker = 1) against one worker, interleaved, with the adapters of both
#      checked equal                                       -> scale_multi_gpu.json, <= 200 s
#      (each worker reserves its GPU through Ray; it computes there only if the pool's worker
#      puts the model on the GPU Ray gives it: the result's median round times say which)
#   5. scale --quick: digits 8-128 and MiniLM 8-16 nodes, allocator check, a 16-node flwr
#      simulation; CPU processes (the federation's engine is on the CPU), with whatever time
#      is left as its budget                               -> scale_gpu_machine.json
# Results go to benchmarks/results/ (the dry run's names end in _dryrun), and to $OUT too when
# it is set (the device tool's output folder). A stage that fails or runs out of time is
# reported and the next one still runs; the script exits non-zero if any stage failed.
#
# Environment: DEVICE (cuda, or cuda:N, or cpu for the dry run), PYTHON (python: one with a
# CUDA build of torch and cola-fed installed), BUDGET (450 seconds).
set -euo pipefail

cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python}
BUDGET=${BUDGET:-450}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
started=$SECONDS
failed=()
written=()

log() { printf '[gpu.sh %4ds] %s\n' "$((SECONDS - started))" "$*" >&2; }
left() { echo $((BUDGET - (SECONDS - started))); }

# stage NAME LIMIT_SECONDS RESULT_NAME COMMAND...: run COMMAND under a time limit (never past
# the overall budget), log how it ended, and remember its result file if it wrote one.
stage() {
    local name=$1 limit=$2 result=$3 rc=0
    shift 3
    if ((limit > $(left))); then limit=$(left); fi
    if ((limit < 10)); then
        log "$name: skipped, $(left) s of the budget left"
        failed+=("$name (no time left)")
        return 0
    fi
    log "$name: start (limit ${limit} s): $*"
    timeout --kill-after=15 "$limit" "$@" || rc=$?
    if ((rc == 0)); then
        log "$name: done"
    elif ((rc == 124 || rc == 137)); then
        log "$name: stopped at its ${limit} s limit (partial results kept, if any)"
        failed+=("$name (time limit)")
    else
        log "$name: FAILED with exit code $rc"
        failed+=("$name (exit $rc)")
    fi
    if [[ -f benchmarks/results/$result.json ]]; then written+=("$result"); fi
}

if [[ $DEVICE == cpu ]]; then
    # the dry run: every stage and flag of the GPU run, at sizes a busy laptop does in minutes
    suffix=_dryrun
    step_sizes=(--batch 4 --length 16 --client-batch 2 --repeats 2)
    step_clients=(--clients 1 4)
    sizing_args=(--device cpu --dtype fp32 --models minilm-l6 --repeats 1)
    gpus=0
    multi_args=(--compare-task digits --compare-nodes 4 --compare-repeats 1 --workers 1 2
                --gpus-per-worker 0)
    scale_args=(--tasks digits --nodes 4 8 --no-simulation --no-allocator-check)
else
    suffix=""
    step_sizes=(--batch 32 --length 64 --client-batch 8 --repeats 15)
    step_clients=(--clients 1 4 16 64 256)
    sizing_args=(--device "$DEVICE" --dtype bf16 --batch-scale 8 --repeats 10)
    gpus=$(nvidia-smi -L | wc -l)
    multi_args=(--compare-task text-classification --compare-nodes 32 --compare-repeats 2
                --workers 1 "$gpus" --gpus-per-worker 1)
    scale_args=(--quick --simulation-timeout 100)
fi

log "device $DEVICE, python $PYTHON, budget ${BUDGET} s"
stage preflight 90 none "$PYTHON" - "$DEVICE" <<'EOF'
import sys

import torch

from benchmarks.server_step import check_device, make_batches

device = sys.argv[1]
check_device(device)  # exits with a clear message if CUDA is asked for and absent
if device.startswith("cuda"):
    props = torch.cuda.get_device_properties(device)
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {props.name}, "
          f"{props.total_memory / 2**30:.0f} GiB", file=sys.stderr)
else:
    print(f"torch {torch.__version__} on the CPU (dry run)", file=sys.stderr)
from cola_fed.tasks.text_classification import load_minilm_classifier

load_minilm_classifier()
make_batches(1, 2, 8, device=device)
print("MiniLM-L6 and the reviews load offline", file=sys.stderr)
EOF
if ((${#failed[@]})); then
    log "preflight failed: nothing else runs"
    exit 1
fi

stage "server step bf16" 240 "server_step_cuda$suffix" \
    "$PYTHON" -m benchmarks.server_step --device "$DEVICE" --dtype bf16 "${step_sizes[@]}" \
    "${step_clients[@]}" --max-server-batch 0 --time-budget 180 \
    --output "server_step_cuda$suffix"

if (($(left) >= 300)) || [[ $DEVICE == cpu ]]; then
    stage "server step fp32" 90 "server_step_cuda_fp32$suffix" \
        "$PYTHON" -m benchmarks.server_step --device "$DEVICE" --dtype fp32 "${step_sizes[@]}" \
        --clients --output "server_step_cuda_fp32$suffix"
else
    log "server step fp32: skipped, $(left) s left"
fi

stage "sizing" 90 "sizing$suffix" \
    "$PYTHON" -m benchmarks.sizing "${sizing_args[@]}" --output "sizing$suffix"

# one Ray worker per GPU against one worker (the dry run: two CPU workers against one)
if ((gpus > 1)) || [[ $DEVICE == cpu ]]; then
    stage "multi-GPU scale" 200 "scale_multi_gpu$suffix" \
        "$PYTHON" -m benchmarks.scale --engine ray "${multi_args[@]}" --no-points \
        --output "scale_multi_gpu$suffix"
else
    log "multi-GPU scale: skipped, nvidia-smi lists $gpus GPU(s)"
fi

# the scale benchmark's own budget leaves its last stage 40 s to finish inside the limit
scale_limit=$(($(left) - 5))
scale_budget=$((scale_limit > 80 ? scale_limit - 40 : scale_limit / 2))
stage "scale" "$scale_limit" "scale_gpu_machine$suffix" \
    "$PYTHON" -m benchmarks.scale "${scale_args[@]}" --time-budget "$scale_budget" \
    --output "scale_gpu_machine$suffix"

if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
    for name in "${written[@]}"; do cp "benchmarks/results/$name.json" "$OUT/"; done
fi
log "wrote: ${written[*]:-nothing} (benchmarks/results/)"
if ((${#failed[@]})); then
    log "not complete: ${failed[*]}"
    exit 1
fi
log "all stages done in $((SECONDS - started)) s"
