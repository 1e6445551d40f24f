#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md, in one script, for a lent GPU (the device
# tool). Each stage writes its JSON under $OUT as soon as it ends, so a run cut short still
# returns what it finished; everything printed goes to $OUT/log.txt.
#
#   here, once:  bash utils/gpu_wheels.sh            # the packages that GPU image lacks
#   there:       bash utils/bench_gpu.sh [STAGE ...]  # default: every stage, in this order
#
# Every stage together is estimated at about 11 minutes on an H200 (not yet run there), over
# a device call's 10: make two calls, `env rewire modes` then `downstream loading`, each
# carrying .whl, data/mini/MINI_CORPUS.json, data/mini/_generation and data/mini/LibriSpeech
# (about 35 MB with the tracked tree's 20: under the 64 MiB a call carries).
#
# Stages (and what each measures, all on a random wav2vec2-large-lv60-shaped encoder, bf16):
#   env        nvidia-smi, versions
#   rewire     the paper's one-at-a-time loop vs one padded pass vs GradCache@64 vs plain
#              batch 64 vs gradient checkpointing: speed-up, MFU, peak memory, padding
#   modes      one pass vs one at a time, SDPA vs eager, torch.compile, checkpointing,
#              exact vs inexact padding, cropped (no padding), in one process
#   downstream frozen-feature extraction (forward MFU) and cached vs on-the-fly heads
#   loading    the recipe end to end: loader workers and pinned memory vs none (the GPU's
#              idle share waiting for audio), and DDP with one process
# The mini corpus is made here first (python utils/make_mini_corpus.py): that GPU has no
# Festival to make it. bench_rewire.py rewrites its JSON after every variant, so a stage
# stopped at its limit still returns the runs it finished.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/bench/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LOG="$OUT/log.txt"
STAGE_LIMIT=${STAGE_LIMIT:-}     # seconds per stage (default: each stage's own, below)
DEVICE=${DEVICE:-cuda}           # DEVICE=cpu SMOKE=1: a quick check of the commands here
if [ -n "${SMOKE:-}" ]; then U=1; R=1; LU=3; else U=10; R=2; LU=60; fi

if ls .whl/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >> "$LOG" 2>&1 || { echo "wheel install failed" >> "$LOG"; exit 1; }
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1

stage() {
    local name=$1 limit=${STAGE_LIMIT:-$2}; shift 2
    echo "=== $name: $* ($(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg))" >> "$LOG"
    local start=$SECONDS
    timeout "$limit" "$@" >> "$LOG" 2>&1
    echo "=== $name: exit $? after $((SECONDS - start)) s" >> "$LOG"
}

STAGES=${*:-env rewire modes downstream loading}
for name in $STAGES; do
    case $name in
    env)
        stage env 60 bash -c "nvidia-smi || true; $PY -c 'import sys, torch, transformers, speechbrain; \
print(sys.version); print(torch.__version__, torch.version.cuda, transformers.__version__, \
speechbrain.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))'" ;;
    rewire)
        stage rewire 300 $PY utils/bench_rewire.py --device "$DEVICE" --updates $U --big_updates 1 \
            --repeats $R --variants paper batched gradcache plain64 batched_checkpointed \
            --output "$OUT/rewire_$DEVICE.json" ;;
    modes)
        stage modes 240 $PY utils/bench_rewire.py --device "$DEVICE" --updates $U --repeats $((R + 1)) \
            --modes one_pass one_at_a_time one_pass_inexact one_pass_cropped one_pass_eager \
            one_pass_checkpointed one_pass_compiled --output "$OUT/rewire_modes_$DEVICE.json" ;;
    downstream)
        stage downstream 120 $PY utils/bench_downstream.py --device "$DEVICE" ${SMOKE:+--steps 1} \
            --output "$OUT/downstream_$DEVICE.json" ;;
    loading)
        stage loading 300 $PY utils/bench_loading.py --device "$DEVICE" --updates $LU --repeats 1 \
            --configs no_workers auto ddp_1 --output "$OUT/loading_$DEVICE.json" ;;
    *)
        echo "unknown stage $name (env rewire modes downstream loading)" >> "$LOG"; exit 2 ;;
    esac
done
tail -n 40 "$LOG"
