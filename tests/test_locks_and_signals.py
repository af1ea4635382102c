"""One writer per run directory and no lost signal, on real processes: the classification agent and a real sweep
(falsification.py's test preset) on real MNIST.

A signal is sent at a sweep of moments. To reach a moment deterministically, a process runs its script through a
small driver that makes one function print "paused at <moment>" and wait for the signal (``common.runtime.run`` is not
changed for the test): parsing the command line (before the run directory exists), loading the data, building
the networks, the replay warm-up, loading the checkpoint, between two cells, and the final checkpoint.
"""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from common.errors import EXIT_COMPLETED, EXIT_INTERRUPTED, EXIT_LOCKED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("PLASTICITY_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))


def dqn(**changes):
    """A tiny classification-agent command line (the lifecycle tests' configuration)."""
    config = {"data_dir": DATA, "total_steps": 40, "learning_starts": 20, "buffer_size": 500, "batch_size": 8,
              "width": 16, "log_every": 10, "target_period": 10, "probe_every": 20, "probe_steps": 6,
              "probe_targets": 2, "probe_inputs": 32, "probe_batch_size": 8, "num_images": 500, **changes}
    return ["dqn_classification_mdp.py", "--no-cuda"] + [w for k, v in config.items()
                                                         for w in ("--" + k.replace("_", "-"), str(v))]


DQN = dqn()[1:]
LONG = dqn(total_steps=10**8, probe_every=2000)[1:]  # runs until a signal stops it
SWEEP = ["falsification.py", "--preset", "test", "--datasets", "offline", "--set", f"data_dir={DATA}"]

DRIVER = '''
import runpy, sys, time
sys.path.insert(0, ".")
import common.runtime.run
moment, call, script = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.argv = sys.argv[3:]
TARGETS = {"parse": ("tyro", None, "cli"), "data": ("common.science.classification", None, "load_dataset"),
           "network": ("common.science.networks", None, "build_network"), "warmup": ("common.runtime.seeds", "StackedReplay", "add"),
           "load": ("common.runtime.run", "Run", "load_checkpoint"), "checkpoint": ("common.runtime.run", "Run", "stage_checkpoint"),
           "cell": ("common.analysis.sweep", None, "run_pack")}
module, cls, name = TARGETS[moment]
owner = __import__(module, fromlist=["_"])
owner = getattr(owner, cls) if cls else owner
original, calls = getattr(owner, name), []

def due(args):
    if moment == "checkpoint":  # the checkpoint at the run's last step
        run, step = args[0], args[2]
        return step >= getattr(run.args, run.total)
    calls.append(1)
    return len(calls) == call

def wrapper(*args, **kwargs):
    if due(args):
        print(f"paused at {moment}", flush=True)
        for _ in range(1200):  # until the signal: raised here, or recorded for the run to act on
            time.sleep(0.05)
            if common.runtime.run.signal_received():
                break
    return original(*args, **kwargs)

setattr(owner, name, wrapper)
runpy.run_path(script, run_name="__main__")
'''


class Process:
    """A script run in a subprocess (through the pausing driver when ``moment`` is given), its output in files."""

    def __init__(self, tmp_path, command, moment=None, call=1, env=None):
        self.out_path = tmp_path / f"out{time.monotonic_ns()}.txt"
        self.err_path = tmp_path / f"err{time.monotonic_ns()}.txt"
        prefix = [sys.executable]
        if moment:
            driver = tmp_path / "driver.py"
            driver.write_text(DRIVER)
            prefix += [str(driver), moment, str(call)]
        self.process = subprocess.Popen(prefix + command, cwd=ROOT, stdout=open(self.out_path, "w"),
                                        stderr=open(self.err_path, "w"), env={**os.environ, **(env or {})})

    def out(self):
        return self.out_path.read_text()

    def err(self):
        return self.err_path.read_text()

    def wait_for(self, text, timeout=240):
        deadline = time.time() + timeout
        while text not in self.out():
            assert self.process.poll() is None, f"exited {self.process.returncode} before {text!r}: {self.err()}"
            assert time.time() < deadline, f"no {text!r} after {timeout} s: {self.out()[-2000:]}"
            time.sleep(0.05)

    def stop(self, sig, timeout=60):
        """Send ``sig``; the exit status and the seconds it took to exit."""
        start = time.time()
        self.process.send_signal(sig)
        status = self.process.wait(timeout=timeout)
        return status, time.time() - start

    def wait(self, timeout=300):
        return self.process.wait(timeout=timeout)


def run(command, timeout=300):
    return subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def rows(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def assert_logged_once(run_dir, total):
    steps = [r["step"] for r in rows(run_dir) if "losses/td_loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == total, steps


def wait_for_rows(run_dir, step, timeout=240):
    deadline = time.time() + timeout
    path = os.path.join(run_dir, "metrics.jsonl")
    while not (os.path.exists(path) and any(r["step"] >= step for r in rows(run_dir))):
        assert time.time() < deadline, f"no row at step {step} in {path}"
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------- one writer per run
def test_a_second_process_on_a_running_run_directory_exits_at_once_naming_the_holder(tmp_path):
    run_dir = str(tmp_path / "run")
    first = Process(tmp_path, ["dqn_classification_mdp.py", *LONG, "--run-dir", run_dir])
    wait_for_rows(run_dir, 10)
    for extra in ([], ["--resume"]):
        start = time.time()
        second = run(["dqn_classification_mdp.py", *LONG, "--run-dir", run_dir, *extra])
        assert second.returncode == EXIT_LOCKED, second.stderr
        assert time.time() - start < 60
        (line,) = second.stderr.strip().splitlines()  # one line, naming the holder
        assert f"pid {first.process.pid} on host {socket.gethostname()}" in line
    status, _ = first.stop(signal.SIGTERM)
    assert status == EXIT_INTERRUPTED  # the first run never noticed
    steps = [r["step"] for r in rows(run_dir) if "losses/td_loss" in r]
    assert steps == sorted(set(steps))  # every row once
    assert len(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))) == 1


def test_a_seed_group_holds_every_seed_directory_and_the_kernel_drops_a_killed_holder(tmp_path):
    base = str(tmp_path / "group")
    group = Process(tmp_path, ["dqn_classification_mdp.py", *LONG, "--checkpoint-every", "10", "--run-dir", base,
                               "--num-seeds", "2"])
    wait_for_rows(base + "__seed2", 20)  # past its first checkpoint
    single = run(["dqn_classification_mdp.py", *LONG, "--seed", "2", "--run-dir", base + "__seed2", "--resume"])
    assert single.returncode == EXIT_LOCKED and f"pid {group.process.pid}" in single.stderr
    group.process.kill()  # SIGKILL: no handler, no clean-up; the lock goes with the process
    group.wait()
    again = Process(tmp_path, ["dqn_classification_mdp.py", *LONG, "--checkpoint-every", "10", "--run-dir", base,
                               "--num-seeds", "2", "--resume"])
    again.wait_for("resuming at step")
    assert again.stop(signal.SIGUSR1)[0] == EXIT_INTERRUPTED


def test_the_same_sweep_task_twice_and_overlapping_ranges_never_share_a_cell(tmp_path):
    runs = ["--runs-dir", str(tmp_path / "runs")]
    first = Process(tmp_path, [*SWEEP, *runs, "--task-id", "0"], moment="warmup")
    first.wait_for("paused at warmup")  # cell 0 is claimed and set up
    twice = run([*SWEEP, *runs, "--task-id", "0"])
    assert twice.returncode == EXIT_LOCKED and f"pid {first.process.pid}" in twice.stderr, twice.stderr
    overlapping = run([*SWEEP, *runs, "--tasks", "0-1"])  # leaves cell 0 to its holder, runs cell 1
    assert overlapping.returncode == EXIT_LOCKED, overlapping.stderr
    cell0, cell1 = (os.path.join(str(tmp_path / "runs"), "falsification", name)
                    for name in ("mnist__true_label__mlp__adam__seed1", "mnist__true_label__mlp__adam__seed2"))
    assert json.load(open(os.path.join(cell1, "summary.json")))["status"] == "completed"
    assert not os.path.exists(os.path.join(cell0, "args.json"))  # not written by the second process
    assert first.stop(signal.SIGTERM)[0] == EXIT_INTERRUPTED  # signalled during warm-up: nothing lost
    assert run([*SWEEP, *runs, "--tasks", "0-1"]).returncode == EXIT_COMPLETED
    for cell in (cell0, cell1):
        assert_logged_once(cell, 40)
        assert len(glob.glob(os.path.join(cell, "events.out.tfevents.*"))) == 1


# ------------------------------------------------------------------------------------------------ no lost signal
@pytest.mark.parametrize("moment,sig", [("parse", signal.SIGTERM), ("data", signal.SIGUSR1),
                                        ("network", signal.SIGINT), ("warmup", signal.SIGTERM)])
def test_a_signal_while_a_run_sets_up_ends_with_75_and_the_same_command_continues(tmp_path, moment, sig):
    run_dir = str(tmp_path / "run")
    command = ["dqn_classification_mdp.py", *DQN, "--run-dir", run_dir]
    process = Process(tmp_path, command, moment=moment)
    process.wait_for(f"paused at {moment}")
    status, seconds = process.stop(sig)
    assert status == EXIT_INTERRUPTED and seconds < 30, process.err()
    assert "Traceback" not in process.err() and not os.path.exists(os.path.join(run_dir, "args.json"))
    again = run(command)
    assert again.returncode == EXIT_COMPLETED, again.stderr
    assert_logged_once(run_dir, 40)


def test_a_signal_while_the_checkpoint_loads_keeps_the_run_resumable(tmp_path):
    run_dir = str(tmp_path / "run")
    assert run(["dqn_classification_mdp.py", *DQN, "--total-steps", "20", "--run-dir", run_dir]).returncode == 0
    command = ["dqn_classification_mdp.py", *DQN, "--run-dir", run_dir, "--resume"]
    process = Process(tmp_path, command, moment="load")
    process.wait_for("paused at load")
    status, seconds = process.stop(signal.SIGTERM)
    assert status == EXIT_INTERRUPTED and seconds < 30 and "Traceback" not in process.err(), process.err()
    assert run(command).returncode == EXIT_COMPLETED
    assert_logged_once(run_dir, 40)


def test_a_signal_during_the_final_checkpoint_of_a_complete_run_exits_0(tmp_path):
    run_dir = str(tmp_path / "run")
    process = Process(tmp_path, ["dqn_classification_mdp.py", *DQN, "--run-dir", run_dir], moment="checkpoint")
    process.wait_for("paused at checkpoint")
    status, seconds = process.stop(signal.SIGTERM)
    assert status == EXIT_COMPLETED and seconds < 30, process.err()
    assert json.load(open(os.path.join(run_dir, "summary.json")))["status"] == "completed"


@pytest.mark.parametrize("moment,call,sig", [("cell", 1, signal.SIGTERM), ("cell", 2, signal.SIGUSR1),
                                             ("checkpoint", 1, signal.SIGTERM), ("data", 2, signal.SIGINT)])
def test_a_signal_at_any_moment_of_a_sweep_ends_with_75_and_the_same_command_completes(tmp_path, moment, call, sig):
    """Before the first cell (no run directory yet), between two cells, in the first cell's final checkpoint (that
    cell completes; the range stops), in the second cell's set-up. (The first cell's set-up: the array-task test.)"""
    command = [*SWEEP, "--runs-dir", str(tmp_path / "runs"), "--tasks", "0-1"]
    process = Process(tmp_path, command, moment=moment, call=call)
    process.wait_for(f"paused at {moment}")
    status, seconds = process.stop(sig)
    assert status == EXIT_INTERRUPTED and seconds < 30 and "Traceback" not in process.err(), process.err()
    again = run(command)
    assert again.returncode == EXIT_COMPLETED, again.stderr
    cells = sorted(glob.glob(str(tmp_path / "runs" / "falsification" / "*")))
    assert len(cells) == 2 and not any(".stale-" in c for c in cells)
    for cell in cells:
        assert_logged_once(cell, 40)


def test_a_signal_while_an_array_task_starts_is_not_lost(tmp_path):
    """The way Slurm runs a cell: $SLURM_ARRAY_TASK_ID; the signal comes during data loading."""
    command = [*SWEEP, "--runs-dir", str(tmp_path / "runs")]
    process = Process(tmp_path, command, moment="data", env={"SLURM_ARRAY_TASK_ID": "0"})
    process.wait_for("paused at data")
    assert process.stop(signal.SIGUSR1)[0] == EXIT_INTERRUPTED


def test_the_hint_of_an_interrupted_seed_group_names_commands_that_work(tmp_path):
    base = str(tmp_path / "group")
    command = [*dqn(total_steps=300, probe_every=150), "--run-dir", base, "--num-seeds", "3"]
    process = Process(tmp_path, command)
    wait_for_rows(base + "__seed3", 30)
    assert process.stop(signal.SIGTERM)[0] == EXIT_INTERRUPTED
    hints = [line.split("continue with: ", 1)[1] for line in process.out().splitlines() if "continue with: " in line]
    assert len(hints) == 3 and all(f"__seed{seed} --resume" in h for seed, h in zip((3, 2, 1), hints)), hints
    result = subprocess.run(hints[1], shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == EXIT_COMPLETED, result.stderr
    assert json.load(open(base + "__seed2/summary.json"))["steps"] == 300
    assert_logged_once(base + "__seed2", 300)


STARTER = '''
import sys, types
sys.path.insert(0, ".")
script, sys.argv = sys.argv[1], sys.argv[1:]
code = compile(open(script).read(), script, "exec")
main = sys.modules["__main__"] = types.ModuleType("__main__")
main.__file__ = script
print("starting", flush=True)  # the interpreter is up: what follows is the script's first line, then its imports
exec(code, main.__dict__)
'''


@pytest.mark.parametrize("script", ["ddqn_atari_layernorm.py", "dqn_classification_mdp.py", "falsification.py"])
def test_a_signal_while_a_script_imports_its_libraries_ends_with_75_and_no_traceback(tmp_path, script):
    """Signals from 0.05 s to 1 s after the script's first line: mostly while torch and the rest import (seconds),
    later in the set-up. Each ends the process with 75, writing nothing; Slurm scripts requeue only on 75."""
    starter = tmp_path / "starter.py"
    starter.write_text(STARTER)
    runs = tmp_path / "runs"
    flags = {"ddqn_atari_layernorm.py": ["--no-cuda", "--run-dir", str(runs / "atari")],
             "dqn_classification_mdp.py": [*DQN, "--run-dir", str(runs / "dqn")],
             "falsification.py": [*SWEEP[1:], "--runs-dir", str(runs), "--tasks", "0"]}[script]
    for delay, sig in ((0.05, signal.SIGINT), (0.2, signal.SIGTERM), (0.5, signal.SIGUSR1), (1.0, signal.SIGINT)):
        process = Process(tmp_path, [str(starter), script, *flags])
        process.wait_for("starting", timeout=60)
        time.sleep(delay)
        status, seconds = process.stop(sig)
        assert status == EXIT_INTERRUPTED and "Traceback" not in process.err(), (delay, sig, status, process.err())
        assert not glob.glob(str(runs / "**" / "args.json"), recursive=True)
