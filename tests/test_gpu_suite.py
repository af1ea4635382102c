"""benchmarks/gpu_suite.sh on a machine without a GPU: its --dry-run (argument handling, the tree's checks, the
wheels resolved for CPython 3.12, MNIST unpacked, each step's flags, the budget logic on stand-in benchmarks) and
its one-line refusals in seconds."""
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared")
WHEELS, MNIST_GZ = os.path.join(SHARED, "wheels-cp312"), os.path.join(SHARED, "data", "MNIST", "gz")
pytestmark = pytest.mark.skipif(not (os.path.isdir(WHEELS) and os.path.isdir(MNIST_GZ)),
                                reason="needs ../shared/wheels-cp312 and ../shared/data/MNIST/gz")


def suite(*args, wheels=WHEELS, mnist_gz=MNIST_GZ, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--wheels", wheels, "--mnist-gz", mnist_gz, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_dry_run_passes_and_writes_what_it_checked(tmp_path):
    results = tmp_path / "out" / "RESULTS-gpu.md"
    done = suite("--dry-run", "--results", str(results))
    assert done.returncode == 0, done.stderr
    text = results.read_text()
    assert "## GPU suite (" in text and "DRY RUN: no figures" in text
    assert f"pip resolves all {len(os.listdir(WHEELS)) - 1} of" in text  # every wheel (the folder has a README)
    for step in ("bench_dqn_classification", "bench_seeds", "bench_curvature", "paper-run"):
        assert f"- {step}: knows every flag" in text, step  # the benchmarks this suite's owner keeps in step
    assert "- bench_ddqn_atari: " in text and "tests collected" in text
    assert "### budget-self-test (overran its budget: stopped, partial results; 2 s of a 2 s budget)" in text
    assert "| a row printed before the stop |" in text
    assert "stand_in.py does not know --num-seeds; ran without it" in text and "| stand-in | 3 steps |" in text
    assert (tmp_path / "out" / "RESULTS-gpu.log").exists()


def one_line_refusal(done, started, words):
    assert done.returncode == 2 and time.time() - started < 30
    assert done.stderr.count("\n") == 1 and all(w in done.stderr for w in words), done.stderr
    assert done.stdout == ""


def test_a_missing_wheel_is_refused_in_seconds_naming_the_fix(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in os.listdir(WHEELS):
        if name.endswith(".whl") and not name.startswith("tyro-"):
            shutil.copy(os.path.join(WHEELS, name), wheels)
    results = tmp_path / "RESULTS-gpu.md"
    started = time.time()
    done = suite("--dry-run", "--results", str(results), wheels=str(wheels))
    one_line_refusal(done, started, ["wheel tyro missing", "cp ../shared/wheels-cp312/*.whl .whl/"])
    assert not results.exists()


@pytest.mark.parametrize("args,words", [
    (["--budget-s", "soon"], ["--budget-s must be a whole number"]),
    (["--budget-s"], ["--budget-s needs a value"]),
    (["--fast"], ["unknown argument --fast", "usage:"]),
])
def test_bad_arguments_are_refused_in_one_line(args, words):
    started = time.time()
    one_line_refusal(suite("--dry-run", *args), started, words)


def test_a_missing_mnist_file_is_refused(tmp_path):
    gz = tmp_path / "gz"
    gz.mkdir()
    for name in os.listdir(MNIST_GZ):
        if not name.startswith("t10k-labels"):
            shutil.copy(os.path.join(MNIST_GZ, name), gz)
    started = time.time()
    one_line_refusal(suite("--dry-run", mnist_gz=str(gz)), started, ["t10k-labels-idx1-ubyte.gz missing"])


def test_a_real_run_without_a_gpu_is_refused(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if sys.version_info[:2] != (3, 12):  # the wheels install only on CPython 3.12
        done = suite("--results", str(tmp_path / "r.md"))
        assert done.returncode == 2 and "pip could not install the wheels" in done.stderr
        return
    done = suite("--results", str(tmp_path / "r.md"))
    assert done.returncode == 2 and "torch sees no CUDA device" in done.stderr
