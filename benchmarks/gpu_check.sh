#!/usr/bin/env bash
# GPU figures in one run (issue 19): the gpu tests, the Prefetcher and the reference model
# on CUDA, and a shardio dataset feeding the GPU end to end.
#
# Needs: a CUDA GPU, python3 with a CUDA torch, and the wheelhouse below (nothing is
# downloaded there). Takes about 3 minutes on an H200; every step has its own time limit
# and all of them together stay under GPU_CHECK_TOTAL_S (default 420 s = 7 minutes).
#
#   1. Prepare, on a machine with registry access, from the repository root:
#        benchmarks/gpu_check.sh --prepare
#      which runs (wheels of shardio's non-torch dependencies and the test tools, for
#      CPython 3.12 on x86-64 Linux: the GPU machine's python; set GPU_CHECK_PYTHON=3.11
#      etc. for another):
#        python3 -m pip download --only-binary=:all: --python-version 3.12 \
#          --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 \
#          --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#          --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
#          -c constraints.txt -d wheelhouse \
#          numpy lmdb h5py zarr fsspec xxhash tqdm psutil pytest hypothesis
#      wheelhouse/ (about 36 MB) is ignored by git: carry it with the tree, never commit it.
#   2. Run, on the GPU machine, from the repository root:
#        OUT=/some/folder benchmarks/gpu_check.sh
#      It installs what is missing from wheelhouse/ (pip --no-index; packages already
#      there, such as the image's numpy, are kept), then runs each step below with its
#      own limit, recording its exit code: one failure loses no other figure.
#
# Output ($OUT, or GPU_CHECK_OUT; at most 8 files, so a transfer that returns only a
# few files returns them all):
#   summary.md      the machine, each step's status and the figures of every step
#   status.tsv      step, exit code (124: over its time limit), seconds
#   prefetch.json   bench_prefetch.py --device cuda rows (copy 4 and 16 ms, C/H 0.5, 1, 2)
#   reference.md    bench_reference.py --device cuda: kept bytes, step time, peak
#                   torch.cuda.max_memory_allocated, largest batch in 16GB; exact, sdpa, 8-bit
#   feed.json       bench_gpu_feed.py: samples/s and waiting-for-data fraction per loader
#   pytest-gpu.xml  python -m pytest -m gpu, as JUnit XML
#   logs.tar.gz     every step's full output
#
# --dry-run: the same steps on the CPU at toy sizes, to test this script without a GPU;
# it also checks, without installing, that wheelhouse/ (when present) holds everything
# for the target python. GPU_CHECK_PYTEST_ARGS adds arguments to the pytest step.
# Exit status: 0 when every step passed, 1 otherwise.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-$ROOT/wheelhouse}
TARGET_PYTHON=${GPU_CHECK_PYTHON:-3.12}
TOTAL_S=${GPU_CHECK_TOTAL_S:-420}
PACKAGES=(numpy lmdb h5py zarr fsspec xxhash tqdm psutil pytest hypothesis)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
  manylinux2014_x86_64 manylinux1_x86_64)

MODE=gpu
case "${1:-}" in
  "") ;;
  --dry-run) MODE=dry ;;
  --prepare) MODE=prepare ;;
  --install) MODE=install ;; # the install step (run by this script under a time limit)
  -h | --help)
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
    exit 0
    ;;
  *)
    echo "gpu_check.sh: unknown option $1 (expected --dry-run, --prepare or nothing)" >&2
    exit 2
    ;;
esac

# pip's flags that pick wheels for the target python and platform.
target_flags() {
  local abi="cp${TARGET_PYTHON/./}"
  printf '%s\n' --only-binary=:all: --python-version "$TARGET_PYTHON" --implementation cp \
    --abi "$abi"
  local platform
  for platform in "${PLATFORMS[@]}"; do printf '%s\n' --platform "$platform"; done
}

if [[ $MODE == prepare ]]; then
  mapfile -t flags < <(target_flags)
  cd "$ROOT" || exit 1
  set -x
  exec "$PYTHON" -m pip download "${flags[@]}" -c constraints.txt -d "$WHEELHOUSE" \
    "${PACKAGES[@]}"
fi

# --install [dry]: what is missing from the wheelhouse; with dry, only resolve for the
# target python into a throwaway folder: is the wheelhouse complete?
if [[ $MODE == install ]]; then
  if [[ ! -d $WHEELHOUSE ]]; then
    echo "no wheelhouse at $WHEELHOUSE: run benchmarks/gpu_check.sh --prepare where pip" \
      "can reach a registry, and carry wheelhouse/ with the tree"
    exit 1
  fi
  pip=("$PYTHON" -m pip install --no-index --find-links "$WHEELHOUSE"
    --disable-pip-version-check --no-compile)
  if [[ ${2:-} == dry ]]; then
    mapfile -t flags < <(target_flags)
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    "${pip[@]}" --dry-run --ignore-installed "${flags[@]}" --target "$scratch" \
      "${PACKAGES[@]}"
    exit
  fi
  "${pip[@]}" "${PACKAGES[@]}" || "${pip[@]}" --user "${PACKAGES[@]}"
  exit
fi

OUT_DIR=${GPU_CHECK_OUT:-${OUT:-}}
if [[ -z $OUT_DIR ]]; then
  echo "gpu_check.sh: set OUT (or GPU_CHECK_OUT) to the folder for the figures" >&2
  exit 2
fi
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-logs.XXXXXX")
STATUS=$OUT_DIR/status.tsv
printf 'step\texit\tseconds\n' >"$STATUS"
START=$SECONDS
FAILED=0

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Benchmarks set their own torch threads; the rest need no more than a few.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

# run_step NAME LIMIT_S COMMAND...: COMMAND's output to $LOGS/NAME.log, bounded by
# LIMIT_S and by what is left of TOTAL_S; its exit code and seconds to status.tsv.
run_step() {
  local name=$1 limit=$2
  shift 2
  local left=$((TOTAL_S - (SECONDS - START)))
  ((limit > left)) && limit=$left
  local begin=$SECONDS code
  if ((limit < 5)); then
    echo "skipped: less than 5 s of the ${TOTAL_S} s budget left" >"$LOGS/$name.log"
    code=125
  else
    echo "== $name (limit ${limit} s): $*" | tee "$LOGS/$name.log"
    (cd "$ROOT" && timeout --kill-after=10 "$limit" "$@") >>"$LOGS/$name.log" 2>&1
    code=$?
  fi
  printf '%s\t%s\t%s\n' "$name" "$code" "$((SECONDS - begin))" >>"$STATUS"
  echo "== $name: exit $code after $((SECONDS - begin)) s"
  ((code == 0)) || FAILED=1
  return 0
}

environment() {
  date -u
  uname -a
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$PYTHON" - <<'EOF'
import sys

import torch

print("python", sys.version.split()[0], "torch", torch.__version__)
if torch.cuda.is_available():
    print("cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
else:
    print("no CUDA device visible to torch")
EOF
  echo "cpus $(nproc)"
}

if [[ $MODE == gpu ]]; then
  DEVICE=cuda
  PREFETCH_ARGS=(--copy-ms "4,16" --ratios "0.5,1,2" --steps 40 --repeats 3)
  REFERENCE_ARGS=(--batch 32 --lengths "128,512,1024" --memory-limit 16GB)
  FEED_ARGS=(--samples 20000 --batch 256 --steps 100)
else
  DEVICE=cpu
  PREFETCH_ARGS=(--pairs 5:5 --steps 4 --repeats 1)
  REFERENCE_ARGS=(--batch 2 --lengths 32 --steps 1 --warmup 0 --threads 1)
  FEED_ARGS=(--samples 256 --batch 16 --steps 3 --warmup 1 --workers 1)
fi
# shellcheck disable=SC2206  # word splitting of the user's extra pytest arguments is wanted
PYTEST_EXTRA=(${GPU_CHECK_PYTEST_ARGS:-})

environment >"$LOGS/environment.log" 2>&1
run_step install 90 bash "$ROOT/benchmarks/gpu_check.sh" --install "$MODE"
run_step pytest-gpu 110 "$PYTHON" -m pytest -m gpu -q -rA -p no:cacheprovider \
  --junitxml "$OUT_DIR/pytest-gpu.xml" "${PYTEST_EXTRA[@]}"
run_step prefetch 90 "$PYTHON" benchmarks/bench_prefetch.py --device "$DEVICE" \
  "${PREFETCH_ARGS[@]}" --json "$OUT_DIR/prefetch.json"
run_step reference 120 "$PYTHON" benchmarks/bench_reference.py --device "$DEVICE" \
  "${REFERENCE_ARGS[@]}"
run_step feed 80 "$PYTHON" benchmarks/bench_gpu_feed.py --device "$DEVICE" \
  "${FEED_ARGS[@]}" --json "$OUT_DIR/feed.json"
# GPU_CHECK_TOTAL_S also bounds the steps added here: each run_step gets what is left.

# reference.md: the benchmark's report (what follows its progress lines).
sed -n '/^Command:/,$p' "$LOGS/reference.log" >"$OUT_DIR/reference.md"

{
  echo "# gpu_check.sh ($MODE) in $((SECONDS - START)) s"
  echo
  echo '```'
  cat "$LOGS/environment.log"
  echo '```'
  echo
  echo "| step | exit | seconds |"
  echo "|---|---:|---:|"
  tail -n +2 "$STATUS" | while IFS=$'\t' read -r step code seconds; do
    echo "| $step | $code | $seconds |"
  done
  for name in install pytest-gpu prefetch reference feed; do
    echo
    echo "## $name (last 60 lines of its output)"
    echo
    echo '```'
    tail -n 60 "$LOGS/$name.log"
    echo '```'
  done
} >"$OUT_DIR/summary.md"
tar -czf "$OUT_DIR/logs.tar.gz" -C "$LOGS" --exclude target . && rm -rf "$LOGS"

echo "figures in $OUT_DIR: $(cd "$OUT_DIR" && echo *)"
exit "$FAILED"
