"""The run lifecycle, the same in every script: run directories, resume, interruption, divergence, exit
statuses and one-line errors. Tiny configurations; subprocesses where signals and exit statuses are the point."""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

import adam_instability_mnist as adam
import brownian_vs_gd as brownian
import common.runtime.logger
import ddqn_atari_layernorm as atari
import dqn_classification_mdp as dqn
from common.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, UsageError
from common.runtime.run import LOCK_FILE
from common.science.classification import load_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("PLASTICITY_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
ADAM = dict(cuda=False, num_images=64, width=16, batch_size=16, steps_per_iteration=5, num_iterations=2,
            eval_size=32, stats_window=2)
DQN = dict(cuda=False, total_steps=40, learning_starts=20, buffer_size=500, batch_size=8, width=16, log_every=10,
           target_period=10, probe_every=20, probe_steps=6, probe_targets=2, probe_inputs=32, probe_batch_size=8,
           num_images=500)
BROWNIAN = dict(cuda=False, num_images=2_000, width=16, total_steps=40, batch_size=32, target_period=20,
                eval_every=20, log_every=10, hessian_inputs=64, lanczos_iters=12, num_grad_samples=32, num_clusters=4)
ATARI = dict(cuda=False, total_frames=4 * 160, batch_size=8, buffer_size=120, min_replay_capacity_fraction=1 / 3,
             target_network_frequency=50, max_episode_frames=80, eval_every=80, eval_frames=120, grad_cov_every=60,
             grad_cov_samples=4, hessian_every=80, hessian_samples=16, hessian_iters=6, log_every=10)
# Runs that last until a signal stops them.
LONG = {"dqn_classification_mdp.py": {**DQN, "total_steps": 10**8, "probe_every": 200, "probe_steps": 20},
        "adam_instability_mnist.py": {**ADAM, "num_iterations": 10**6, "steps_per_iteration": 20},
        "brownian_vs_gd.py": {**BROWNIAN, "total_steps": 10**8, "eval_every": 200},
        "ddqn_atari_layernorm.py": {**ATARI, "total_frames": 10**9, "eval_every": 10**6, "hessian_every": 0}}
FIGURES = {"dqn_classification_mdp.py": "fig4_probe_curves.png",
           "adam_instability_mnist.py": "fig1_adam_instability.png", "brownian_vs_gd.py": "fig2_brownian_vs_gd.png",
           "ddqn_atari_layernorm.py": "grad_cov.png"}


def argv(config):
    out = []
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        out += ([flag] if value else ["--no-" + flag[2:]]) if isinstance(value, bool) else [flag, str(value)]
    return out


def read_rows(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def read_json(run_dir, name):
    return json.load(open(os.path.join(run_dir, name)))


def files(run_dir):
    """Every file's bytes, less the lock file (it names the process that last held the directory)."""
    return {p: open(os.path.join(d, p), "rb").read() for d, _, names in os.walk(run_dir) for p in names
            if p != LOCK_FILE}


# ------------------------------------------------------------------------------------------------- 1. run directories
def test_default_run_names_are_unique_for_runs_started_in_the_same_second(tmp_path, monkeypatch, data_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common.runtime.logger, "time", types.SimpleNamespace(time=lambda: 1_700_000_000.0))
    first = adam.train(adam.Args(data_dir=data_dir, **ADAM))
    second = adam.train(adam.Args(data_dir=data_dir, **ADAM))
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert len(runs) == 2 and runs[0] == "adam_instability_mnist__1__1700000000", runs
    assert first["run_dir"] != second["run_dir"]
    for run in runs:
        assert [r["step"] for r in read_rows(tmp_path / "runs" / run)] == [0, 5, 10]


def test_an_existing_run_is_never_written_without_resume(tmp_path, data_dir):
    run_dir = str(tmp_path / "run")
    adam.train(adam.Args(data_dir=data_dir, run_dir=run_dir, **ADAM))
    before = files(run_dir)
    with pytest.raises(UsageError, match="already holds a run: pass --resume"):
        adam.train(adam.Args(data_dir=data_dir, run_dir=run_dir, **ADAM))
    assert files(run_dir) == before


@pytest.mark.parametrize("where", ["a file", "under a file", "in /proc"])
def test_a_run_dir_that_cannot_hold_a_run_is_refused_before_anything_is_written(tmp_path, where, data_dir):
    (tmp_path / "file").write_text("not a run")
    run_dir = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "run",
               "in /proc": "/proc/plasticity-lifecycle-test"}[where]
    with pytest.raises(UsageError, match="--run-dir"):
        adam.train(adam.Args(data_dir=data_dir, run_dir=str(run_dir), **ADAM))
    assert os.listdir(tmp_path) == ["file"] and (tmp_path / "file").read_text() == "not a run"


# ---------------------------------------------------------------------------------------------------------- 2. resume
def test_resume_with_changed_arguments_is_refused_listing_them(tmp_path, data_dir):
    run_dir = str(tmp_path / "run")
    adam.train(adam.Args(data_dir=data_dir, run_dir=run_dir, **{**ADAM, "num_iterations": 1}))
    before = files(run_dir)
    with pytest.raises(UsageError) as error:
        adam.train(adam.Args(data_dir=data_dir, run_dir=run_dir, resume=True,
                             **{**ADAM, "learning_rate": 2e-3, "width": 8, "num_iterations": 2}))
    message = str(error.value)
    assert "--learning-rate" in message and "--width" in message and "--num-iterations" not in message
    assert files(run_dir) == before


def test_resume_keeps_the_original_args_and_counts_every_segment(tmp_path, data_dir):
    run_dir = str(tmp_path / "run")
    first = adam.train(adam.Args(data_dir=data_dir, run_dir=run_dir, **{**ADAM, "num_iterations": 1}))
    # the length, the device flag and the data path may change on resume
    second = adam.train(adam.Args(data_dir=os.path.join(data_dir, "."), run_dir=run_dir, resume=True,
                                  **{**ADAM, "num_iterations": 2, "cuda": True}))
    assert read_json(run_dir, "args.json")["num_iterations"] == 1
    assert read_json(run_dir, "args.json")["cuda"] is False
    assert second == read_json(run_dir, "summary.json")
    assert second["status"] == "completed" and second["steps"] == 10 and second["resumes"] == [5]
    assert second["wall_time_s"] > first["wall_time_s"]
    assert [r["step"] for r in read_rows(run_dir)] == [0, 5, 10]


# -------------------------------------------------------------------------------------------- 3. resume bookkeeping
def test_rows_logged_after_the_checkpoint_are_dropped_on_resume(tmp_path, data_dir):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    dqn.train(dqn.Args(data_dir=data_dir, run_dir=straight, **DQN))
    dqn.train(dqn.Args(data_dir=data_dir, run_dir=split, **{**DQN, "total_steps": 20}))
    # a segment killed by SIGKILL after the checkpoint: it logged more rows and wrote no summary
    with open(os.path.join(split, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": 30, "losses/td_loss": 1.0}) + "\n")
    os.remove(os.path.join(split, "summary.json"))
    dqn.train(dqn.Args(data_dir=data_dir, run_dir=split, resume=True, **DQN))
    a, b = read_rows(straight), read_rows(split)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if k != "charts/SPS"} == {k: v for k, v in rb.items() if k != "charts/SPS"}


def test_a_completed_run_is_not_rerun_by_resume(tmp_path, data_dir):
    run_dir = str(tmp_path / "run")
    adam.train(adam.Args(data_dir=data_dir, run_dir=run_dir, **ADAM))
    before = files(run_dir)
    again = subprocess.run([sys.executable, "adam_instability_mnist.py", "--data-dir", data_dir, "--run-dir", run_dir,
                            "--resume", *argv(ADAM)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already completed" in again.stdout, again.stderr
    assert files(run_dir) == before
    # raising the total continues training
    more = adam.train(adam.Args(data_dir=data_dir, run_dir=run_dir, resume=True, **{**ADAM, "num_iterations": 3}))
    assert more["status"] == "completed" and more["steps"] == 15 and more["resumes"] == [10]


# ------------------------------------------------------------------------------------------------- 4. interruption
@pytest.mark.parametrize("script,sig", [
    ("dqn_classification_mdp.py", signal.SIGINT),  # SIGTERM: test_dqn_classification_mdp.py
    ("adam_instability_mnist.py", signal.SIGINT),
    ("brownian_vs_gd.py", signal.SIGUSR1), ("brownian_vs_gd.py", signal.SIGINT),
    ("ddqn_atari_layernorm.py", signal.SIGINT)])  # SIGTERM: the bit-identical tests below, test_ddqn_atari.py
def test_a_signal_ends_every_script_the_same_way(tmp_path, script, sig):
    run_dir = str(tmp_path / "run")
    stdout = open(tmp_path / "stdout", "w+")
    data = [] if script.startswith("ddqn") else ["--data-dir", DATA]
    process = subprocess.Popen([sys.executable, script, *data, "--run-dir", run_dir, *argv(LONG[script])],
                               cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True)
    metrics, deadline = os.path.join(run_dir, "metrics.jsonl"), time.time() + 120
    enough = 10 if script.startswith("ddqn") else 3  # Atari: past its first gradient-covariance snapshot
    while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).readlines()) >= enough):
        time.sleep(0.2)
    process.send_signal(sig)
    assert process.wait(timeout=60) == EXIT_INTERRUPTED
    assert "Traceback" not in process.stderr.read()
    stdout.seek(0)
    assert stdout.readline().strip() == f"run directory {run_dir}"  # printed at the start (item 8)
    summary = read_json(run_dir, "summary.json")
    assert summary["status"] == "interrupted" and summary["steps"] > 0
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    assert checkpoint["lifecycle"]["step"] == summary["steps"]
    assert os.path.getsize(os.path.join(run_dir, "figures", FIGURES[script])) > 10_000


def test_a_signal_during_a_probe_is_honoured_within_seconds(tmp_path):
    run_dir = str(tmp_path / "run")
    config = {**DQN, "probe_steps": 300_000}  # the probe at step 0 would run for minutes
    process = subprocess.Popen([sys.executable, "dqn_classification_mdp.py", "--data-dir", DATA, "--run-dir", run_dir,
                                *argv(config)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        time.sleep(0.2)
    time.sleep(2)  # inside the probe
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == EXIT_INTERRUPTED
    assert time.time() - sent < 10
    assert "Traceback" not in process.stderr.read()
    assert read_json(run_dir, "summary.json")["steps"] == 0 and read_rows(run_dir) == []  # redone after resume


def _kill_self_on_call(monkeypatch, module, name, call):
    """Make the ``call``-th call of ``module.name`` deliver SIGTERM to this process first."""
    original, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def _same_rows(a, b):
    strip = lambda rows: [{k: v for k, v in r.items() if k != "charts/SPS"} for r in rows]  # noqa: E731
    assert strip(read_rows(a)) == strip(read_rows(b))


def _same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_dqn_interrupted_in_a_probe_resumes_bit_identically(tmp_path, monkeypatch, data_dir):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    dqn.train(dqn.Args(data_dir=data_dir, run_dir=straight, **DQN))
    with monkeypatch.context() as m:
        _kill_self_on_call(m, dqn, "probe_plasticity", call=2)  # the probe at step 20
        first = dqn.train(dqn.Args(data_dir=data_dir, run_dir=split, **DQN))
    assert first["status"] == "interrupted" and first["steps"] == 20
    assert [r["step"] for r in read_rows(split) if "probe/plasticity" in r] == [0]
    assert dqn.train(dqn.Args(data_dir=data_dir, run_dir=split, resume=True, **DQN))["resumes"] == [20]
    a, b = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=False) for d in (straight, split))
    _same_tensors(a["q_network"], b["q_network"])
    assert all(torch.equal(a["replay"][k], b["replay"][k]) for k in ("obs", "actions", "rewards", "next_obs"))
    _same_rows(straight, split)


def test_adam_interrupted_mid_iteration_resumes_bit_identically(tmp_path, monkeypatch, data_dir):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    config = {**ADAM, "num_iterations": 3}
    adam.train(adam.Args(data_dir=data_dir, run_dir=straight, **config))
    with monkeypatch.context() as m:
        _kill_self_on_call(m, adam.Learner, "train_step", call=2 * 5 + 3)  # in the second iteration
        first = adam.train(adam.Args(data_dir=data_dir, run_dir=split, **config))
    assert first["status"] == "interrupted" and first["steps"] == 5
    adam.train(adam.Args(data_dir=data_dir, run_dir=split, resume=True, **config))
    a, b = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=False) for d in (straight, split))
    for la, lb in zip(a["learners"], b["learners"]):
        _same_tensors(la["model"], lb["model"])
    _same_rows(straight, split)


def test_brownian_interrupted_in_a_curvature_measurement_resumes_bit_identically(tmp_path, monkeypatch, data_dir):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    brownian.train(brownian.Args(data_dir=data_dir, run_dir=straight, **BROWNIAN))
    with monkeypatch.context() as m:
        _kill_self_on_call(m, brownian, "measure_curvature", call=4)  # the random walk's at step 20
        first = brownian.train(brownian.Args(data_dir=data_dir, run_dir=split, **BROWNIAN))
    assert first["status"] == "interrupted" and first["steps"] == 20
    brownian.train(brownian.Args(data_dir=data_dir, run_dir=split, resume=True, **BROWNIAN))
    a, b = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=False) for d in (straight, split))
    _same_tensors(a["gd_net"], b["gd_net"])
    _same_tensors(a["walk_net"], b["walk_net"])
    _same_rows(straight, split)


def test_atari_interrupted_in_an_evaluation_resumes_bit_identically(tmp_path, monkeypatch):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    atari.train(atari.Args(run_dir=straight, **ATARI))
    with monkeypatch.context() as m:
        _kill_self_on_call(m, atari, "evaluate", call=1)  # at step 80
        first = atari.train(atari.Args(run_dir=split, **ATARI))
    assert first["status"] == "interrupted" and first["steps"] == 80
    assert not any("eval/episodes" in r for r in read_rows(split))
    atari.train(atari.Args(run_dir=split, resume=True, **ATARI))
    a, b = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=False) for d in (straight, split))
    _same_tensors(a["q_net"], b["q_net"])
    _same_rows(straight, split)


# ------------------------------------------------------------------------------- 5, 6. non-finite values, exit status
def test_a_nan_probe_ends_the_run_as_diverged_with_exit_status_3(tmp_path):
    run_dir = str(tmp_path / "run")
    config = {**DQN, "optimizer": "sgd", "learning_rate": 1e12, "probe_every": 10, "log_every": 40}
    result = subprocess.run([sys.executable, "dqn_classification_mdp.py", "--data-dir", DATA, "--run-dir", run_dir,
                             *argv(config)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == EXIT_DIVERGED and "Traceback" not in result.stderr, result.stderr
    assert "diverged" in result.stdout
    summary = read_json(run_dir, "summary.json")
    assert summary["status"] == "diverged" and summary["steps"] < 40


def test_a_nan_curvature_ends_the_run_as_diverged(tmp_path, data_dir):
    config = {**BROWNIAN, "learning_rate": 1e12, "eval_every": 5, "log_every": 40}
    summary = brownian.train(brownian.Args(data_dir=data_dir, run_dir=str(tmp_path / "run"), **config))
    assert summary["status"] == "diverged" and summary["steps"] < 40


# --------------------------------------------------------------------------------- 7. one-line errors, not tracebacks
def test_a_corrupt_checkpoint_is_a_one_line_error(tmp_path, data_dir):
    run_dir = str(tmp_path / "run")
    adam.train(adam.Args(data_dir=data_dir, run_dir=run_dir, **{**ADAM, "num_iterations": 1}))
    path = os.path.join(run_dir, "checkpoint.pt")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(UsageError, match=r"checkpoint.pt is corrupt.*another --run-dir"):  # main prints one line
        adam.train(adam.Args(data_dir=data_dir, run_dir=run_dir, resume=True, **ADAM))


@pytest.mark.parametrize("module, config", [(dqn, DQN), (brownian, BROWNIAN)], ids=["dqn", "brownian"])
def test_a_checkpoint_with_the_log_window_under_its_old_key_is_a_one_line_error(tmp_path, module, config, data_dir):
    run_dir = str(tmp_path / "run")
    module.train(module.Args(data_dir=data_dir, run_dir=run_dir, **{**config, "total_steps": 20}))
    path = os.path.join(run_dir, "checkpoint.pt")
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["stats"] = checkpoint.pop("log_window")
    torch.save(checkpoint, path)
    with pytest.raises(UsageError, match=r"lacks.*log_window|lacks the log window.*another --run-dir"):
        module.train(module.Args(data_dir=data_dir, run_dir=run_dir, resume=True, **config))


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_mnist_file_is_reported_as_corrupt(tmp_path, damage, data_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in os.listdir(os.path.join(data_dir, "MNIST", "raw")):
        os.symlink(os.path.join(data_dir, "MNIST", "raw", name), raw / name)
    images = raw / "train-images-idx3-ubyte"
    images.unlink()
    images.write_bytes(open(os.path.join(data_dir, "MNIST", "raw", images.name), "rb").read(1000)
                       if damage == "truncated" else b"")
    with pytest.raises(UsageError, match="corrupt or truncated"):
        load_dataset("mnist", str(tmp_path))


def test_a_mistyped_data_dir_is_not_created(tmp_path):
    typo = tmp_path / "dtaa" / "mnist"
    try:
        load_dataset("mnist", str(typo))
    except UsageError:
        assert not (tmp_path / "dtaa").exists()
    else:
        pytest.skip("this machine could download MNIST")


@pytest.mark.parametrize("script,config,message", [
    (dqn, {"two_hot": True, "v_min": 5.0, "v_max": -5.0}, "--v-min"),
    (dqn, {"probe_every": 100}, "--probe-every"),
    (dqn, {"seed": -1}, "--seed"),
    (adam, {"seed": -3}, "--seed"),
    (brownian, {"seed": -1}, "--seed"),
    (brownian, {"lanczos_iters": 100_000}, "--lanczos-iters must be at most"),
    (atari, {"hessian_iters": 100_000}, "--hessian-iters must be at most"),
    (atari, {"learning_rate": float("nan")}, "--learning-rate")])
def test_bad_arguments_are_one_line_errors(tmp_path, script, config, message, data_dir):
    tiny = {dqn: DQN, adam: ADAM, brownian: BROWNIAN, atari: ATARI}[script]
    data = {} if script is atari else {"data_dir": data_dir}
    with pytest.raises(UsageError, match=message):
        script.train(script.Args(run_dir=str(tmp_path / "run"), **data, **{**tiny, **config}))
    assert not (tmp_path / "run").exists()


def test_track_without_wandb_fails_before_anything_is_written(tmp_path, data_dir):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    with pytest.raises(UsageError, match="wandb"):
        adam.train(adam.Args(data_dir=data_dir, run_dir=str(tmp_path / "run"), track=True, **ADAM))
    assert not (tmp_path / "run").exists()


def test_an_evaluation_that_finishes_no_episode_logs_no_score(tmp_path, capsys):
    config = {**ATARI, "total_frames": 4 * 40, "eval_every": 40, "eval_frames": 8, "eval_envs": 1,
              "grad_cov_every": 0, "hessian_every": 0}
    atari.train(atari.Args(run_dir=str(tmp_path / "run"), **config))
    evaluations = [r for r in read_rows(tmp_path / "run") if "eval/episodes" in r]
    assert evaluations == [{"step": 40, "eval/episodes": 0}]
    assert "no evaluation episode finished" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- 8. newcomer friction
def test_atari_prints_progress_at_least_every_30_seconds(tmp_path, monkeypatch, capsys):
    clock = iter(range(0, 10**9, 31))  # every reading of the clock is 31 s after the last
    monkeypatch.setattr(atari, "time", types.SimpleNamespace(time=lambda: float(next(clock))))
    atari.train(atari.Args(run_dir=str(tmp_path / "run"), **{**ATARI, "total_frames": 4 * 20, "eval_every": 10**6,
                                                             "grad_cov_every": 0, "hessian_every": 0}))
    progress = [line for line in capsys.readouterr().out.splitlines() if "steps/s" in line]
    assert len(progress) >= 10 and progress[-1].startswith("step 20/20")


def test_docs_use_the_readme_interpreter():
    for name in ["README.md"] + [os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs"))
                                 if f.endswith(".md")]:
        for number, line in enumerate(open(os.path.join(ROOT, name)), 1):
            bare = re.search(r"(?<![/\w.-])python3? (?!-m venv)", line)
            assert not bare, f"{name}:{number}: use .venv/bin/python, as the README's set-up: {line.strip()}"


def test_a_signal_after_the_last_step_still_reaches_the_handler_before_the_run(tmp_path):
    """A sweep listens for SIGTERM between cells; a signal during a cell's final checkpoint or figures completes that
    cell but must still stop the range (it was dropped before)."""
    import dataclasses

    from common.runtime.run import Run

    @dataclasses.dataclass
    class Args:
        exp_name: str = "t"
        seed: int = 0
        track: bool = False
        resume: bool = False
        run_dir: str = ""
        total_steps: int = 1

    heard = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: heard.append(signum))
    try:
        run = Run(Args(run_dir=str(tmp_path / "run")), total="total_steps")
        run.start(0)
        os.kill(os.getpid(), signal.SIGTERM)  # taken by the run's handler
        assert heard == [] and run.interrupted
        summary = run.finish(1, done=True)
        assert summary["status"] == "completed"
        assert heard == [signal.SIGTERM]  # passed on when the run gave the handler back
    finally:
        signal.signal(signal.SIGTERM, previous)
