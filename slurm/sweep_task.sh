#!/bin/bash
# One Slurm array task of a sweep: run its cell, pass Slurm's early warning on to it, requeue it if interrupted.
#
#   exec "$SLURM_SUBMIT_DIR/slurm/sweep_task.sh" falsification.py [sweep flags ...]    (from an sbatch script)
#
# `exec` keeps this shell the batch step, so `--signal=B:USR1@<lead>` reaches it. A shell cannot handle a signal
# while its foreground child runs, so the run goes to the background and this shell waits for it: on USR1 or
# TERM it forwards the signal, the run writes checkpoint.pt and exits 75 (EX_TEMPFAIL), and the task is requeued;
# when it starts again the sweep sees the checkpoint and resumes the cell. Other statuses end the task as they are
# (0 completed, 3 diverged, 73 another process holds the cell, 2 usage error, 1 crash), and this script exits
# with the run's status. Without Slurm (no SLURM_JOB_ID) it runs the same way and says how to continue.
set -u
cd "${SLURM_SUBMIT_DIR:-.}"
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1  # progress lines reach the log as they happen (tail -f)
echo "task ${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID:-} (job ${SLURM_JOB_ID:-none}) on $(hostname -s)," \
     "restart ${SLURM_RESTART_COUNT:-0}, $(date -Is): $PYTHON $*"

# The array was sized for the sbatch script's own --seeds-per-task; another value changes the number of tasks.
seeds_per_task=$(printf '%s\n' "$@" | sed -n '/^--seeds-per-task$/{n;p}; s/^--seeds-per-task=//p' | sort -u | wc -l)
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ] && [ -z "${SWEEP_TASKS:-}" ] && [ "$seeds_per_task" -gt 1 ]; then
    echo "error: --seeds-per-task differs from the sbatch script's, so its --array does not match the grid:" \
         "submit with slurm/submit.sh, which sizes --array from --list" >&2
    exit 2
fi

signalled= child=
forward() { signalled=$1; echo "got SIG$1: the run checkpoints and stops"; [ -z "$child" ] || kill -s "$1" "$child"; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
"$PYTHON" "$@" &
child=$!
[ -z "$signalled" ] || kill -s "$signalled" "$child"  # a signal that came before the run started
while kill -0 "$child" 2>/dev/null; do wait "$child"; done  # a trapped signal interrupts `wait`: wait again
wait "$child"; status=$?  # bash keeps the status of a finished child
echo "run exited with status $status, $(date -Is)"

# 128+n: the run died of the forwarded signal before Python installed its handler; nothing was written yet.
if [ -n "$signalled" ] && [ "$status" -gt 128 ]; then status=75; fi
if [ "$status" -eq 75 ]; then
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        echo "requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
    else
        echo "not under Slurm: run the same command again to continue"
    fi
fi
exit "$status"
