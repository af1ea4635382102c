#!/bin/bash
# Submit a sweep's sbatch script as an array sized from its grid: --array=0-(N-1), N the tasks that `--list` prints
# with the same flags, so that every task has a cell and every cell a task (whatever --seeds-per-task, --preset or
# --datasets give).
#
#   slurm/submit.sh [sbatch options] slurm/falsification.sbatch [sweep flags]
#   slurm/submit.sh --gres=gpu:1 slurm/interventions.sbatch --preset cpu --runs-dir runs
#
# An --array among the sbatch options is kept (a part of the grid on purpose); tasks beyond the grid then fail.
set -eu
# run from the repository root, as sbatch is (the scripts cd to the submit folder)
PYTHON=${PYTHON:-.venv/bin/python}
options=()
while [ $# -gt 0 ] && [[ "$1" != *.sbatch ]]; do options+=("$1"); shift; done
if [ $# -eq 0 ]; then
    echo "usage: slurm/submit.sh [sbatch options] slurm/<sweep>.sbatch [sweep flags]" >&2
    exit 2
fi
script=$1
shift
# the sweep command of the script: its line `exec ".../sweep_task.sh" <sweep.py> <flags> "$@"`
sweep=$(sed -n 's/^exec "[^"]*sweep_task\.sh" \(.*\) "\$@"$/\1/p' "$script")
if [ -z "$sweep" ]; then
    echo "error: $script has no line 'exec \".../sweep_task.sh\" <sweep.py> ... \"\$@\"'" >&2
    exit 2
fi
read -ra sweep_words <<< "$sweep"
listing=$("$PYTHON" "${sweep_words[@]}" "$@" --list) || exit $?
tasks=$(printf '%s\n' "$listing" | grep -c .)
array=(--array="0-$((tasks - 1))")
for option in "${options[@]}"; do
    case $option in --array*|-a*) array=() ;; esac
done
echo "$script: $tasks tasks (${sweep_words[*]} $* --list)"
exec sbatch "${array[@]}" --export=ALL,SWEEP_TASKS="$tasks" "${options[@]}" "$script" "$@"
