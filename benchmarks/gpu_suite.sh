#!/usr/bin/env bash
# The project's GPU check in one command: the CUDA tests and every benchmark at GPU sizes, each under its own time
# budget, all figures appended to one results file in benchmarks/RESULTS.md's format (README, "Benchmarks").
#
#   bash benchmarks/gpu_suite.sh [--dry-run] [--results PATH] [--budget-s N] [--only STEP,...] [--wheels DIR]
#                                [--mnist-gz DIR]
#
# The GPU machine has Python 3.12 with torch and no registry, so the tree brings the missing packages as wheels
# (--wheels, default .whl/: a copy of ../shared/wheels-cp312) and MNIST as its four .gz files (--mnist-gz, default
# data/MNIST/gz/); both paths are ignored by git. The suite installs the wheels into a temporary --target folder,
# unpacks MNIST into a temporary data folder in torchvision's layout, then runs the steps of STEPS below. A step
# that overruns its budget is stopped, and its section holds what it printed so far. The budgets add up to
# --budget-s (default 420 s), so the suite ends within 8 minutes, set-up and stops included.
#
# --dry-run (for a machine without a GPU): the same argument handling and checks of the tree, a pip dry run of the
# wheels for CPython 3.12 on x86-64 into a temporary folder plus a zip check of each, the real MNIST unpack, each
# step's flags against its --help (a flag it does not know is reported and dropped, as in a real run), the CUDA
# tests collected, and the budget logic on a stand-in benchmark that overruns a 2-second budget; it writes the
# results file with those outcomes.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD INVOCATION="$*"
PYTHON=${PYTHON:-python3}
DRY_RUN=0 RESULTS= BUDGET_S=420 ONLY= WHEELS=.whl MNIST_GZ=data/MNIST/gz
usage="usage: bash benchmarks/gpu_suite.sh [--dry-run] [--results PATH] [--budget-s N] [--only STEP,...] [--wheels DIR] [--mnist-gz DIR]"
die() { echo "gpu_suite.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --results|--budget-s|--only|--wheels|--mnist-gz)
      [ $# -ge 2 ] || die "$1 needs a value ($usage)"
      case $1 in
        --results) RESULTS=$2 ;; --budget-s) BUDGET_S=$2 ;; --only) ONLY=$2 ;; --wheels) WHEELS=$2 ;; --mnist-gz) MNIST_GZ=$2 ;;
      esac
      shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) die "unknown argument $1 ($usage)" ;;
  esac
  shift
done
# Figures go under benchmarks/, ready to commit; a dry run's outcome, by default, outside the tree.
[ -n "$RESULTS" ] || { [ $DRY_RUN = 1 ] && RESULTS=${TMPDIR:-/tmp}/RESULTS-gpu-dry-run.md || RESULTS=benchmarks/RESULTS-gpu.md; }
[[ $BUDGET_S =~ ^[0-9]+$ ]] && [ "$BUDGET_S" -ge 6 ] || die "--budget-s must be a whole number of seconds, at least 6, got $BUDGET_S"

# The steps: name, share of the budget (per 420 s), command. Flags a benchmark does not know are dropped and reported,
# so a renamed flag costs one figure, not the run. Each benchmark with --budget-s stops starting measurements at
# 80% of its share, and appends its section to the file given by --results.
STEPS=(
  "cuda-tests|160|$PYTHON -m pytest -v -m cuda -rfEs -p no:cacheprovider tests/test_cuda.py"
  "bench_dqn_classification|55|$PYTHON benchmarks/bench_dqn_classification.py --probe-widths 512 128 --probe-steps 100 --repeats 3 --agent-steps 2000 --results @PART --budget-s @BUDGET"
  "bench_seeds|65|$PYTHON benchmarks/bench_seeds.py --widths 512 --seeds 1 4 16 --steps 500 --probe-steps 50 --results @PART --budget-s @BUDGET"
  "bench_ddqn_atari|60|$PYTHON benchmarks/bench_ddqn_atari.py --cuda --parts c,eval,b --steps 1000 --no-write"
  "bench_curvature|35|$PYTHON benchmarks/bench_curvature.py --cuda --repeats 3 --nv 10 --results @PART --budget-s @BUDGET"
  "paper-run|45|$PYTHON benchmarks/bench_dqn_classification.py --no-stats --no-probe --no-agent --paper-run-steps 2000 --results @PART --budget-s @BUDGET"
)
# --only: those steps, each with its share of --budget-s.
names=$(printf '%s\n' "${STEPS[@]}" | cut -d'|' -f1 | tr '\n' ' ')
for name in ${ONLY//,/ }; do
  [[ " $names" == *" $name "* ]] || die "--only: no step $name (the steps: $names)"
done

# ------------------------------------------------------------------------------------------- what the tree needs
REQUIRED_WHEELS="gymnasium ale_py tyro stable_baselines3 cloudpickle farama_notifications typeguard docstring_parser"
MNIST_FILES="train-images-idx3-ubyte:47040016 train-labels-idx1-ubyte:60008 t10k-images-idx3-ubyte:7840016 t10k-labels-idx1-ubyte:10008"
prepare="prepare it from the project root with: mkdir -p .whl data/MNIST/gz && cp ../shared/wheels-cp312/*.whl .whl/ && cp ../shared/data/MNIST/gz/*.gz data/MNIST/gz/"
command -v "$PYTHON" >/dev/null || die "no $PYTHON on PATH (set PYTHON=...)"
command -v timeout >/dev/null || die "no timeout command (coreutils) on PATH"
[ -d "$WHEELS" ] || die "no wheels folder $WHEELS; $prepare"
for name in $REQUIRED_WHEELS; do
  compgen -G "$WHEELS/$name-*.whl" >/dev/null || die "wheel $name missing from $WHEELS; $prepare"
done
[ -d "$MNIST_GZ" ] || die "no MNIST folder $MNIST_GZ; $prepare"
for entry in $MNIST_FILES; do
  [ -s "$MNIST_GZ/${entry%%:*}.gz" ] || die "MNIST file ${entry%%:*}.gz missing from $MNIST_GZ; $prepare"
done
for step in "${STEPS[@]}"; do
  set -- ${step##*|}
  for word; do case $word in *.py) [ -f "$word" ] || die "$word is missing from the tree" ;; esac; done
done
mkdir -p "$(dirname "$RESULTS")" && : >>"$RESULTS" || die "cannot write the results file $RESULTS"

WORK=$(mktemp -d) || die "mktemp failed"
trap 'rm -rf "$WORK"' EXIT
LOG=${RESULTS%.md}.log
: >"$LOG"

# ------------------------------------------------------------------------------------------------ packages, data
SITE=$WORK/site
if [ $DRY_RUN = 1 ]; then  # the wheels are for CPython 3.12 on x86-64: resolve them for that, install nothing
  "$PYTHON" -m pip install --dry-run -q --no-index --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 --target "$SITE" --report "$WORK/pip.json" \
    "$WHEELS"/*.whl >>"$LOG" 2>&1 || die "the wheels in $WHEELS do not install for CPython 3.12 on x86-64 (see $LOG)"
  "$PYTHON" - "$WORK/pip.json" "$WHEELS"/*.whl <<'EOF' || die "a wheel in $WHEELS is damaged or not in pip's plan (see above)"
import json, sys, zipfile
report, wheels = json.load(open(sys.argv[1])), sys.argv[2:]
assert len(report["install"]) == len(wheels), f"pip would install {len(report['install'])} of {len(wheels)} wheels"
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        assert z.testzip() is None and any(n.endswith(".dist-info/METADATA") for n in z.namelist()), wheel
EOF
else
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
    >>"$LOG" 2>&1 || die "pip could not install the wheels of $WHEELS (see $LOG)"
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DATA=$WORK/data
mkdir -p "$DATA/MNIST/raw"
for entry in $MNIST_FILES; do
  name=${entry%%:*}
  gzip -dc "$MNIST_GZ/$name.gz" >"$DATA/MNIST/raw/$name" || die "cannot unpack $MNIST_GZ/$name.gz"
  [ "$(stat -c %s "$DATA/MNIST/raw/$name")" = "${entry##*:}" ] || die "$MNIST_GZ/$name.gz unpacks to the wrong size"
done
export PLASTICITY_DATA_DIR=$DATA

device=$("$PYTHON" -c "
import platform, torch
cuda = torch.cuda.is_available()
name = torch.cuda.get_device_name() if cuda else 'no GPU'
print(f'{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}', cuda)
" 2>>"$LOG") || die "$PYTHON cannot import torch (see $LOG)"
[ $DRY_RUN = 1 ] || [ "${device##* }" = True ] || die "torch sees no CUDA device (${device% *}): run this on the GPU machine, or pass --dry-run"
device=${device% *}

# ------------------------------------------------------------------------------------------------- the budget
# run_step NAME SECONDS COMMAND...: run under `timeout`, then append its section to the results file, the
# benchmark's own "## " headings one level below the step's.
run_step() {
  local name=$1 budget=$2; shift 2
  local out=$WORK/$name.out partfile=$WORK/$name.md args=() word start status rc unknown
  for word; do word=${word//@PART/$partfile}; args+=("${word//@BUDGET/$((budget * 8 / 10))}"); done
  start=$SECONDS
  timeout --kill-after=5 "$budget" "${args[@]}" >"$out" 2>&1; rc=$?
  if [ $rc = 2 ] && unknown=$(unknown_flags "${args[@]}") && [ -n "$unknown" ]; then
    echo "note: ${args[1]##*/} does not know $unknown; ran without it" | tee -a "$out.notes"
    mapfile -t args < <(drop_flags "$unknown" "${args[@]}")
    timeout --kill-after=5 "$((budget - (SECONDS - start) > 5 ? budget - (SECONDS - start) : 5))" "${args[@]}" \
      >"$out" 2>&1; rc=$?
  fi
  case $rc in
    0) status=ok ;;
    124|137) status="overran its budget: stopped, partial results" ;;
    *) status="failed (exit status $rc)" ;;
  esac
  { echo "===== $name: $status"; cat "$out"; } >>"$LOG"
  {
    echo; echo "### $name ($status; $((SECONDS - start)) s of a $budget s budget)"; echo
    [ -f "$out.notes" ] && sed 's/^/- /' "$out.notes" && echo
    echo "\`${args[*]}\`"; echo
    if [ -s "$partfile" ]; then sed 's/^## /#### /' "$partfile"
    elif grep -q '^## ' "$out"; then sed -n '/^## /,$p' "$out" | sed 's/^## /#### /'
    else echo '```'; grep -v '^\s*$' "$out" | tail -n 40; echo '```'
    fi
  } >>"$RESULTS"
  echo "$name: $status ($((SECONDS - start)) s)"
}

# The flags of a command line (interpreter, script, flags) that the script's --help does not mention.
unknown_flags() {
  local help word unknown=()
  help=$(timeout 60 "$1" "$2" --help 2>&1) || [ -n "$help" ] || return 1
  for word; do
    case $word in --*) grep -q -e "${word}\b" <<<"$help" || grep -q -e "--no-${word#--}\b" <<<"$help" || unknown+=("$word") ;; esac
  done
  echo "${unknown[*]}"
}

# The command line without the given flags and their values.
drop_flags() {
  local drop=" $1 " word skipping=0; shift
  for word; do
    case $word in --*) [[ $drop == *" $word "* ]] && skipping=1 || skipping=0 ;; esac
    [ $skipping = 0 ] && echo "$word"
  done
}

{
  echo; echo "## GPU suite ($(date -u '+%Y-%m-%d %H:%M') UTC, $device$([ $DRY_RUN = 1 ] && echo ', DRY RUN: no figures'))"; echo
  echo "\`bash benchmarks/gpu_suite.sh $INVOCATION\`: each step has its share of $BUDGET_S s and is stopped when it overruns."
} >>"$RESULTS"

if [ $DRY_RUN = 1 ]; then
  check_flags() {  # a step's flags against its --help, as a real run would retry
    local name=$1 unknown; shift
    unknown=$(unknown_flags "$@") || { echo "$name: --help failed"; return 1; }
    if [ -n "$unknown" ]; then echo "- $name: does not know $unknown (a real run drops them and says so)"
    else echo "- $name: knows every flag"; fi
  }
  {
    echo; echo "### dry run"; echo
    echo "- wheels: pip resolves all $(ls "$WHEELS"/*.whl | wc -l) of $WHEELS for CPython 3.12 on x86-64; zip files intact"
    echo "- MNIST: unpacked into torchvision's layout, sizes checked"
  } >>"$RESULTS"
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name share command <<<"$step"
    [ "$name" = cuda-tests ] && continue
    check_flags "$name" $command | tee -a "$RESULTS" || die "$name: $command --help failed (see above)"
  done
  collected=$("$PYTHON" -m pytest -q -m cuda --collect-only -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -n 1)
  [[ $collected == *"tests collected"* ]] || die "the CUDA tests do not collect: $collected"
  echo "- CUDA tests: $collected" | tee -a "$RESULTS"
  # Stand-in benchmarks: one that overruns its budget, one that is given a flag it does not know.
  run_step budget-self-test 2 "$PYTHON" -c "print('| a row printed before the stop |'); import time; time.sleep(60)"
  grep -q '^### budget-self-test (overran its budget: stopped, partial results; [2-9] s' "$RESULTS" \
    && grep -q '| a row printed before the stop |' "$RESULTS" || die "the budget logic did not stop the stand-in benchmark"
  printf '%s\n' 'import argparse' 'parser = argparse.ArgumentParser()' 'parser.add_argument("--steps", type=int)' \
    'print(f"| stand-in | {parser.parse_args().steps} steps |")' >"$WORK/stand_in.py"
  run_step flag-self-test 30 "$PYTHON" "$WORK/stand_in.py" --steps 3 --num-seeds 3
  grep -q 'stand_in.py does not know --num-seeds; ran without it' "$RESULTS" && grep -q '| stand-in | 3 steps |' "$RESULTS" \
    || die "the suite did not rerun the stand-in benchmark without the flag it does not know"
  echo "gpu_suite.sh: dry run passed; results in $RESULTS"
  exit 0
fi

for step in "${STEPS[@]}"; do
  IFS='|' read -r name share command <<<"$step"
  [ -z "$ONLY" ] || [[ ",$ONLY," == *",$name,"* ]] || continue
  run_step "$name" "$((share * BUDGET_S / 420))" $command
done
echo "gpu_suite.sh: done in $SECONDS s; results in $RESULTS, logs in $LOG"
