"""The sweeps' sbatch scripts on a real single-node Slurm (Debian's slurm-wlm and munge, run as root): an array of
four tiny cells runs and is analysed, and a preempted task is requeued and resumes from its checkpoint.

The cluster is started here (../shared/notes/slurm-single-node.md) on free ports with its state in a temporary
folder, and its daemons are stopped by their pid files at the end. The tests skip only when slurm-wlm is not
installed and cannot be (no root or no apt), and say so.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

import falsification
from common.analysis import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM_CONF = """\
ClusterName=plasticitytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def shell(command, tmp_path, data_dir, env=None, **kwargs):
    """A shell command from the repository root with Slurm's variables unset (as outside Slurm)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    job_env = {**clean, "PYTHON": sys.executable, "PLASTICITY_DATA_DIR": data_dir, "OMP_NUM_THREADS": "1",
               **(env or {})}
    return subprocess.Popen(command, cwd=ROOT, env=job_env, stdout=open(tmp_path / "out.txt", "w"),
                            stderr=subprocess.STDOUT, **kwargs)


def test_sweep_task_runs_without_slurm_and_passes_the_status_on(tmp_path, data_dir):
    cell = ["falsification.py", "--preset", "test", "--datasets", "offline", "--runs-dir", str(tmp_path / "runs"),
            "--set", f"data_dir={data_dir}", "--set", "total_steps=100000", "--set", "probe_every=0",
            "--task-id", "0"]
    task = shell(["slurm/sweep_task.sh", *cell], tmp_path, data_dir)
    run_dir = tmp_path / "runs" / "falsification" / "mnist__true_label__mlp__adam__seed1"
    deadline = time.time() + 240
    while not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().count("\n") >= 2):
        assert time.time() < deadline and task.poll() is None, (tmp_path / "out.txt").read_text()
        time.sleep(0.2)
    task.send_signal(signal.SIGTERM)  # to the shell, as Slurm signals the batch step
    assert task.wait(timeout=120) == 75
    out = (tmp_path / "out.txt").read_text()
    assert "got SIGTERM" in out and "run exited with status 75" in out and "not under Slurm" in out, out
    assert "unbound variable" not in out
    usage = shell(["slurm/sweep_task.sh", *cell[:-1], "999"], tmp_path, data_dir)
    assert usage.wait(timeout=120) == 2  # a task outside the grid: the sweep's usage error, passed on


def test_an_sbatch_script_refuses_a_seeds_per_task_its_array_was_not_sized_for(tmp_path, data_dir):
    task = shell(["bash", "slurm/falsification.sbatch", "--preset", "test", "--seeds-per-task", "2"], tmp_path,
                 data_dir, env={"SLURM_ARRAY_TASK_ID": "0"})
    assert task.wait(timeout=60) == 2
    assert "slurm/submit.sh" in (tmp_path / "out.txt").read_text()


def slurm_installed_or_skip():
    if os.path.exists("/usr/sbin/slurmctld") and os.path.exists("/usr/sbin/munged"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("slurm-wlm is not installed and cannot be here (needs root and apt-get)")
    install = subprocess.run(["apt-get", "install", "-y", "-qq", "slurm-wlm"], capture_output=True, text=True,
                             env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
    if install.returncode or not os.path.exists("/usr/sbin/slurmctld"):
        pytest.skip(f"slurm-wlm could not be installed: {install.stderr.strip()[-300:]}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def munge_works():
    probe = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, text=True)
    return probe.returncode == 0 and "Success" in probe.stdout


def stop_by_pid_file(path, timeout=20):
    try:
        pid = int(open(path).read().split()[0])
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node cluster; yields the environment (SLURM_CONF) its commands need."""
    slurm_installed_or_skip()
    folder = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    memory = int(open("/proc/meminfo").read().split("MemTotal:")[1].split()[0]) // 1024 - 1024
    conf = SLURM_CONF.format(host=socket.gethostname().split(".")[0], dir=folder, cpus=os.cpu_count(),
                             memory=memory, ctld_port=free_port(), slurmd_port=free_port())
    (folder / "slurm.conf").write_text(conf)
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    started_munge = not munge_works()
    if started_munge:  # otherwise a munged is already running and we leave it alone
        os.makedirs("/run/munge", exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        assert munge_works(), "munged started but does not authenticate"
    try:
        subprocess.run(["/usr/sbin/slurmctld"], env=env, check=True)
        subprocess.run(["/usr/sbin/slurmd"], env=env, check=True)
        deadline = time.time() + 60
        while not re.search(r"idle|mixed", squeue_like(["sinfo", "-h", "-o", "%T"], env)):
            assert time.time() < deadline, (folder / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        deadline = time.time() + 30
        while squeue_like(["squeue", "-h"], env).strip() and time.time() < deadline:
            time.sleep(0.5)
        stop_by_pid_file(folder / "slurmd.pid")
        stop_by_pid_file(folder / "slurmctld.pid")
        if started_munge:
            stop_by_pid_file("/run/munge/munged.pid")


def squeue_like(command, env):
    return subprocess.run(command, env=env, capture_output=True, text=True).stdout


def submit(env, tmp_path, data_dir, array, *flags, submitter=("sbatch",)):
    """sbatch the project's own falsification.sbatch from the repository root, as a user would."""
    job_env = {**env, "PYTHON": sys.executable, "PLASTICITY_DATA_DIR": data_dir, "OMP_NUM_THREADS": "1"}
    command = [*submitter, "--parsable", *([f"--array={array}"] if array else []), f"--output={tmp_path}/%A_%a.out",
               "--mem=1G", "slurm/falsification.sbatch", "--preset", "test", "--datasets", "offline",
               "--runs-dir", str(tmp_path / "runs"), *flags]
    out = subprocess.run(command, cwd=ROOT, env=job_env, capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1].split(";")[0]


def wait_for(env, job_id, timeout=300):
    deadline = time.time() + timeout
    while squeue_like(["squeue", "-h", "-j", job_id], env).strip():
        assert time.time() < deadline, f"job {job_id} still queued after {timeout} s"
        time.sleep(1)


def test_array_of_four_tasks_runs_and_is_analyzed(slurm, tmp_path, data_dir, capsys):
    """Four tasks of four seeds each (falsification.sbatch packs a cell's seeds: --seeds-per-task 4)."""
    job_id = submit(slurm, tmp_path, data_dir, "0-3")
    wait_for(slurm, job_id)
    logs = sorted(tmp_path.glob(f"{job_id}_*.out"))
    assert len(logs) == 4, list(tmp_path.iterdir())
    for log in logs:
        assert "run exited with status 0" in log.read_text(), log.read_text()[-3000:]
    for cell in falsification.make_grid(argparse.Namespace(datasets="offline")).cells()[:16]:
        summary = json.loads((tmp_path / "runs" / "falsification" / cell.name / "summary.json").read_text())
        assert (summary["status"], summary["steps"]) == ("completed", 40)
    # --min-initial-fit -1: the test preset's probe fits nothing, so the default threshold would exclude every run.
    assert sweep.run(falsification.SWEEP, ["analyze", "--runs-dir", str(tmp_path / "runs"),
                                           "--min-initial-fit", "-1"]) == 0
    assert "16 completed runs analysed" in capsys.readouterr().out
    result = json.loads((tmp_path / "runs" / "falsification.json").read_text())
    assert {"tests", "sign_reversals"} <= result.keys()


def test_a_preempted_task_is_requeued_and_resumes_from_its_checkpoint(slurm, tmp_path, data_dir):
    total = 2_000
    job_id = submit(slurm, tmp_path, data_dir, "0", "--set", f"total_steps={total}", "--set", "probe_every=0",
                    "--set", "log_every=50", "--set", "checkpoint_every=50")
    run_dir = tmp_path / "runs" / "falsification" / "mnist__true_label__mlp__adam__seed1"
    deadline = time.time() + 180
    while not ((run_dir / "checkpoint.pt").exists() and (run_dir / "metrics.jsonl").exists()
               and len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 2):
        assert time.time() < deadline, "the task did not reach its first checkpoints"
        time.sleep(0.2)
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be preempted: raise total"
    # What --signal=B:USR1@<lead> does near the time limit: signal only the batch shell.
    subprocess.run(["scancel", "--batch", "--signal=USR1", f"{job_id}_0"], env=slurm, check=True)
    wait_for(slurm, job_id)
    log = (tmp_path / f"{job_id}_0.out").read_text()
    assert "got SIGUSR1" in log and "run exited with status 75" in log and "requeueing" in log, log[-3000:]
    stopped_at = int(re.search(r"interrupted at step ([\d,]+)", log)[1].replace(",", ""))
    assert 0 < stopped_at < total
    assert "restart 1" in log and "resuming from" in log and "run exited with status 0" in log, log[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("completed", total)
    logged = [row["step"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if "losses/td_loss" in row]
    assert logged == list(range(50, total + 1, 50))  # once each: the second segment went on, it did not restart
    assert not list(run_dir.parent.glob("*.stale-*"))


def test_a_resubmission_while_the_first_array_runs_never_shares_a_cell(slurm, tmp_path, data_dir):
    """The same array task submitted again while the first still trains: the second finds every seed's directory
    locked, exits 73 at once and is not requeued; the first is untouched and completes, every row logged once."""
    # long enough that the second submission starts and exits while the first still trains, on a loaded machine too
    total, flags = 3_000, ("--set", "total_steps=3000", "--set", "probe_every=1500", "--set", "log_every=50")
    first = submit(slurm, tmp_path, data_dir, "0", *flags)
    run_dirs = [tmp_path / "runs" / "falsification" / cell.name
                for cell in falsification.make_grid(argparse.Namespace(datasets="offline")).cells()[:4]]
    deadline = time.time() + 240
    while not all((d / "metrics.jsonl").exists() for d in run_dirs):
        assert time.time() < deadline, "the first task did not start"
        time.sleep(0.2)
    second = submit(slurm, tmp_path, data_dir, "0", *flags)
    wait_for(slurm, second)
    log = (tmp_path / f"{second}_0.out").read_text()
    assert "run exited with status 73" in log and "is being written by pid" in log, log[-3000:]
    assert "requeueing" not in log
    assert not (run_dirs[0] / "summary.json").exists(), "the first task finished before the second came: raise total"
    wait_for(slurm, first)
    assert "run exited with status 0" in (tmp_path / f"{first}_0.out").read_text()
    for run_dir in run_dirs:
        logged = [row["step"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                  if "losses/td_loss" in row]
        assert logged == list(range(50, total + 1, 50))
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_submit_sizes_the_array_from_the_grid(slurm, tmp_path, data_dir):
    """--seeds-per-task 2 makes twice the tasks of the script's 4: submit.sh asks --list and sizes --array."""
    listing = subprocess.run([sys.executable, "falsification.py", "--datasets", "offline", "--seeds-per-task", "2",
                              "--list"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    job_id = submit(slurm, tmp_path, data_dir, None, "--seeds-per-task", "2",
                    submitter=("slurm/submit.sh", "--hold"))
    try:
        shown = squeue_like(["scontrol", "show", "job", job_id], slurm)
        tasks = len(listing.splitlines())
        cells = len(falsification.make_grid(argparse.Namespace(datasets="offline")).cells())
        assert tasks == cells // 2 and re.search(rf"ArrayTaskId=0-{tasks - 1}\b", shown), shown[:500]
    finally:
        subprocess.run(["scancel", job_id], env=slurm)


def test_atari_seeds_that_diverged_before_their_first_checkpoint_stay_diverged(slurm, tmp_path):
    """slurm/atari.sbatch with SEEDS=2 and --learning-rate 1e30: both seeds diverge before their first checkpoint
    and the task exits 0. The same task submitted again leaves them as they are (nothing moved aside, nothing
    retrained) and exits 0."""
    flags = ["--no-cuda", "--total-frames", "640", "--batch-size", "8", "--buffer-size", "120",
             "--min-replay-capacity-fraction", "0.34", "--max-episode-frames", "80", "--eval-every", "80",
             "--eval-frames", "120", "--eval-envs", "1", "--grad-cov-every", "0", "--hessian-every", "0",
             "--log-every", "10", "--checkpoint-every", "160", "--learning-rate", "1e30"]
    job_env = {**slurm, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "RUNS": str(tmp_path / "runs"),
               "SEEDS": "2"}
    run_dirs = [tmp_path / "runs" / f"Amidar_baseline__seed{seed}" for seed in (1, 2)]
    before = None
    for submission in (1, 2):
        job_id = subprocess.run(["sbatch", "--parsable", "--array=3", f"--output={tmp_path}/%A_%a.out",
                                 "--cpus-per-task=1", "--mem=2G", "slurm/atari.sbatch", *flags], cwd=ROOT,
                                env=job_env, capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
        wait_for(slurm, job_id)
        log = (tmp_path / f"{job_id}_3.out").read_text()
        for run_dir in run_dirs:
            summary = json.loads((run_dir / "summary.json").read_text())
            assert summary["status"] == "diverged" and summary["steps"] < 160, log[-3000:]
            assert not (run_dir / "checkpoint.pt").exists()
        if submission == 1:
            assert "seeds exited with status 3" in log, log[-3000:]
            before = {d: (d / "summary.json").read_bytes() for d in run_dirs}
        else:
            assert log.count("it stays diverged") == 2 and "nothing to do" in log, log[-3000:]
            assert {d: (d / "summary.json").read_bytes() for d in run_dirs} == before
        assert "requeue" not in log
        assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [d.name for d in run_dirs]
