#!/bin/bash
# One Slurm array task of a sweep: run its cell, pass Slurm's early warning on to it, requeue it if interrupted.
#
#   exec "$SLURM_SUBMIT_DIR/slurm/sweep_task.sh" falsification.py [sweep flags ...]    (from an sbatch script)
#
# `exec` keeps this shell the batch step, so `--signal=B:USR1@<lead>` reaches it. A shell cannot handle a signal
# while its foreground child runs, so the run goes to the background and this shell waits for it: on USR1 or
# TERM it forwards the signal, the run writes checkpoint.pt and exits 75 (EX_TEMPFAIL), and the task is requeued;
# when it starts again the sweep sees the checkpoint and resumes the cell. Other statuses end the task as they are
# (0 completed, 3 diverged, 2 usage error, 1 crash).
set -u
cd "${SLURM_SUBMIT_DIR:-.}"
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1  # progress lines reach the log as they happen (tail -f)
echo "task ${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID:-} (job ${SLURM_JOB_ID:-}) on $(hostname -s)," \
     "restart ${SLURM_RESTART_COUNT:-0}, $(date -Is): $PYTHON $*"

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

# 75: the run checkpointed on the signal. 128+n: it died of the forwarded signal before installing its handler.
if [ "$status" -eq 75 ] || { [ -n "$signalled" ] && [ "$status" -gt 128 ]; }; then
    echo "requeueing job ${SLURM_JOB_ID:-}"
    scontrol requeue "${SLURM_JOB_ID}"
fi
exit "$status"
