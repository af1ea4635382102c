"""The scripts on a CUDA GPU (``pytest -m cuda``; every test skips where ``torch.cuda.is_available()`` is false).

1. Each script's ``train`` on ``cuda`` agrees with the same run on the CPU. CUDA's generators (Philox) draw other
   numbers than the CPU's (Mersenne Twister), so the CUDA run draws every random number from CPU generators and
   moves it to the GPU (``cpu_random_streams``): both runs then see the same numbers and differ only by arithmetic.
   Tolerances: float64 runs (the classification agent, the sweeps' cells, brownian_vs_gd) agree to rtol 1e-7,
   atol 1e-9 in every logged metric and every floating-point tensor of the checkpoint; the float32 scripts
   (adam_instability_mnist casts its inputs to float32, the Atari network too) to rtol 2e-3 in every metric, TF32
   off; the Atari agent has the same episode count and TD losses within rtol 1e-2 over 300 steps.
2. A run interrupted by SIGTERM on ``cuda`` and resumed is bit-identical to an uninterrupted ``cuda`` run: metrics,
   weights, optimizer state, replay and the RNG states of the final checkpoint (deterministic algorithms on). The
   resumed run reaches the same numbers only if the checkpoint restored the CUDA generators' states.
3. ``--num-seeds 3`` on ``cuda`` equals three single ``cuda`` runs (float64, rtol 1e-9; Atari where it has
   ``num_seeds``).
4. No hidden host syncs. ``set_sync_debug_mode("error")`` for a whole run would stop at its first set-up copy
   (loading the dataset onto the device is a synchronising copy), so the loops run in mode "warn" at two lengths
   and every sync is counted by the project line that made it: set-up and the final checkpoint are the same in
   both, so a count that grows with the run's length is a sync in the loop outside ``common.runtime.sync.allowed_sync()``.
   The allowance itself is checked in mode "error".

The tiny configurations are the CPU tests' own (``tests/test_lifecycle.py``, the sweeps' ``--preset test``), read
when a test runs, so that they follow the scripts' Args. ``PLASTICITY_CUDA_TESTS_ON_CPU=1`` runs these tests without
a GPU to check their own machinery: the "cuda" runs then fall back to the CPU, and the checks that need a GPU skip.
"""
import collections
import contextlib
import dataclasses
import functools
import json
import os
import signal
import threading
import time
import traceback
import warnings

# cuBLAS is deterministic only with a fixed workspace; read when its first handle is made, so set before any CUDA use.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_CPU = os.environ.get("PLASTICITY_CUDA_TESTS_ON_CPU") == "1"
HAS_GPU = torch.cuda.is_available()
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not (HAS_GPU or ON_CPU), reason="needs a CUDA GPU (torch.cuda.is_available())")]
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="checks the GPU itself")

TIMING_KEYS = ("charts/SPS",)  # wall-clock speed differs between any two runs
FLOAT64 = dict(rtol=1e-7, atol=1e-9)
FLOAT32 = dict(rtol=2e-3, atol=1e-5)


# ------------------------------------------------------------------------------------------------ configurations
def lifecycle_config(name, **overrides):
    """A tiny configuration of tests/test_lifecycle.py (DQN, ADAM, BROWNIAN, ATARI), with ``overrides``."""
    import test_lifecycle

    return {**getattr(test_lifecycle, name), **overrides}


def script(name):
    import importlib

    return importlib.import_module(name)


def train(module_name, run_dir, config, **overrides):
    module = script(module_name)
    fields = {f.name for f in dataclasses.fields(module.Args)}
    config = {**config, **overrides}
    if "data_dir" in fields and "data_dir" not in config:
        config["data_dir"] = data_path()
    return module.train(module.Args(run_dir=str(run_dir), **config))


def data_path():
    return os.environ.get("PLASTICITY_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))


def run_sweep_cell(module_name, runs_dir, cuda, extra=()):
    """Cell 0 of a sweep at its ``--preset test``, on the GPU or the CPU; returns the cell's run directory."""
    from common.analysis import sweep

    argv = ["--tasks", "0", "--preset", "test", "--runs-dir", str(runs_dir), "--set", f"data_dir={data_path()}",
            "--set", f"cuda={'true' if cuda else 'false'}", *extra]
    assert sweep.run(script(module_name).SWEEP, argv) == 0
    (run_dir,) = {d for d, _, names in os.walk(runs_dir) if "summary.json" in names}
    return run_dir


@contextlib.contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def ieee_float32():
    """No TF32 in matrix products or convolutions (cuDNN allows it by default), so float32 means float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def deterministic():
    """Deterministic kernels (cuDNN's convolutions, index updates), so that two CUDA runs can be bit-identical."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


@contextlib.contextmanager
def used_the_gpu():
    """Fail unless the block allocated GPU memory (a run that silently fell back to the CPU proves nothing)."""
    if not HAS_GPU:
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    yield
    assert torch.cuda.max_memory_allocated() > before, "the 'cuda' run allocated no GPU memory: it ran on the CPU"


# ------------------------------------------------------------------------- the CPU's random numbers on the GPU
RANDOM_FUNCTIONS = ("rand", "randn", "randint", "randperm", "normal", "bernoulli", "multinomial", "poisson",
                    "rand_like", "randn_like", "randint_like")
RANDOM_METHODS = ("uniform_", "normal_", "bernoulli_", "random_", "exponential_", "geometric_", "cauchy_",
                  "log_normal_", "bernoulli", "multinomial")


class CpuStreamGenerator(torch.Generator):
    """A CPU generator that reports the device it was asked for, so that code places its draws there."""

    def __new__(cls, device="cpu"):
        return super().__new__(cls, "cpu")

    def __init__(self, device="cpu"):
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self._device = device

    @property
    def device(self):
        return self._device


def _to_cpu(value):
    return value.cpu() if isinstance(value, torch.Tensor) else value


def _drawn_on_cpu(function):
    """``function`` with its CUDA results drawn on the CPU (the generator given, else the CPU's global one)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = kwargs.get("device")
        target = torch.device(device) if device is not None else (tensors[0].device if tensors else None)
        if target is None or target.type != "cuda":
            return function(*args, **kwargs)
        if device is not None:
            kwargs["device"] = "cpu"
        return function(*map(_to_cpu, args), **{k: _to_cpu(v) for k, v in kwargs.items()}).to(target)
    return wrapper


def _method_drawn_on_cpu(method, in_place):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.device.type != "cuda":
            return method(self, *args, **kwargs)
        args, kwargs = tuple(map(_to_cpu, args)), {k: _to_cpu(v) for k, v in kwargs.items()}
        if not in_place:
            return method(self.detach().cpu(), *args, **kwargs).to(self.device)
        scratch = self.detach().cpu()
        method(scratch, *args, **kwargs)
        with torch.no_grad():
            self.copy_(scratch)
        return self
    return wrapper


@contextlib.contextmanager
def cpu_random_streams(monkeypatch):
    """Every random draw of the block comes from a CPU generator, in the order the CPU run makes it."""
    with monkeypatch.context() as m:
        m.setattr(torch, "Generator", CpuStreamGenerator)
        for name in RANDOM_FUNCTIONS:
            if hasattr(torch, name):
                m.setattr(torch, name, _drawn_on_cpu(getattr(torch, name)))
        for name in RANDOM_METHODS:
            m.setattr(torch.Tensor, name, _method_drawn_on_cpu(getattr(torch.Tensor, name), name.endswith("_")))
        yield


def cuda_generator_hint():
    """Where a draw escaped ``cpu_random_streams``, the CUDA default generator moved on from its seeding."""
    if not HAS_GPU:
        return ""
    offset = int(torch.cuda.get_rng_state()[8:16].view(torch.int64))
    return (f" (the CUDA default generator's offset is {offset}: a random draw bypassed the CPU streams, e.g. "
            f"nn.functional.dropout)" if offset else "")


# ---------------------------------------------------------------------------------------------- comparing runs
def rows(run_dir):
    """metrics.jsonl without wall-clock speeds."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


def summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def checkpoint_tensors(run_dir):
    """Every tensor of checkpoint.pt by its path of keys, whatever the script keeps there."""
    def walk(value, path):
        if isinstance(value, torch.Tensor):
            yield path, value.cpu()
        elif hasattr(value, "__array__") and hasattr(value, "dtype") and not isinstance(value, (int, float)):
            yield path, torch.as_tensor(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, f"{path}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                yield from walk(item, f"{path}/{i}")

    path = os.path.join(run_dir, "checkpoint.pt")
    return dict(walk(torch.load(path, map_location="cpu", weights_only=False), "")) if os.path.exists(path) else {}


def is_rng_state(tensor):
    """A generator's state: torch's (CPU: 5,056 bytes, CUDA: 16), whose kinds differ between a CPU and a CUDA run,
    or numpy's (624 words), which seeds in lockstep share as one process."""
    return tensor.dim() == 1 and ((tensor.dtype == torch.uint8 and len(tensor) in (5056, 16))
                                  or (tensor.dtype == torch.uint32 and len(tensor) == 624))


def assert_close_runs(a, b, tolerance, checkpoints=True, hint=""):
    """Runs ``a`` and ``b`` logged the same rows (steps, keys) with numbers within ``tolerance``, ended with the
    same status and steps and, with ``checkpoints``, hold the same checkpoint tensors within it."""
    rows_a, rows_b = rows(a), rows(b)
    assert [sorted(r) for r in rows_a] == [sorted(r) for r in rows_b], f"the two runs logged different rows{hint}"
    for row_a, row_b in zip(rows_a, rows_b):
        for key, value in row_a.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                torch.testing.assert_close(float(row_b[key]), float(value), **tolerance, equal_nan=True,
                                           msg=lambda m: f"step {row_a['step']} {key}: {m}{hint}")
            else:
                assert row_b[key] == value, (row_a["step"], key)
    summary_a, summary_b = summary(a), summary(b)
    assert summary_a["status"] == summary_b["status"] == "completed" and summary_a["steps"] == summary_b["steps"]
    if not checkpoints:
        return
    tensors_a, tensors_b = checkpoint_tensors(a), checkpoint_tensors(b)
    common = [k for k in tensors_a if k in tensors_b and tensors_a[k].shape == tensors_b[k].shape
              and not is_rng_state(tensors_a[k])]
    assert len(common) >= 0.8 * len(tensors_a) > 0, f"checkpoints share {len(common)} of {len(tensors_a)} tensors"
    for key in common:
        x, y = tensors_a[key], tensors_b[key]
        if x.is_floating_point():
            torch.testing.assert_close(y.to(x.dtype), x, **tolerance, msg=lambda m: f"checkpoint {key}: {m}{hint}")
        else:
            assert torch.equal(x, y), f"checkpoint {key} differs{hint}"


def assert_identical_runs(a, b):
    """Bit for bit: every metric and every tensor of the final checkpoints, RNG states included."""
    rows_a, rows_b = rows(a), rows(b)
    different = [(x, y) for x, y in zip(rows_a, rows_b) if x != y]
    assert len(rows_a) == len(rows_b) and not different, f"metrics differ, first at {different[:1]}"
    assert summary(a)["steps"] == summary(b)["steps"]
    tensors_a, tensors_b = checkpoint_tensors(a), checkpoint_tensors(b)
    assert tensors_a.keys() == tensors_b.keys() and tensors_a
    different = [k for k in tensors_a if not torch.equal(tensors_a[k], tensors_b[k])]
    assert not different, f"checkpoint tensors differ: {different[:10]}"


def episodes(run_dir):
    return [r["charts/episodic_return"] for r in rows(run_dir) if "charts/episodic_return" in r]


def assert_atari_runs_agree(a, b):
    """The Atari criterion: the same episodes and TD losses within rtol 1e-2 (float32 over a few hundred steps)."""
    assert len(episodes(a)) == len(episodes(b)) > 0, (episodes(a), episodes(b))
    losses = [[(r["step"], r["losses/td_loss"]) for r in rows(d) if "losses/td_loss" in r] for d in (a, b)]
    assert [s for s, _ in losses[0]] == [s for s, _ in losses[1]] and losses[0]
    torch.testing.assert_close([v for _, v in losses[1]], [v for _, v in losses[0]], rtol=1e-2, atol=1e-6)
    assert summary(a)["status"] == summary(b)["status"] == "completed"


# ------------------------------------------------------------------------------------- 1. CUDA agrees with CPU
# (module, tiny configuration of test_lifecycle.py, default dtype, tolerance)
SCRIPTS = {
    "dqn_classification_mdp": ("DQN", dict(reset_last_layer=True, shrink_perturb=True, redo=True), torch.float64,
                               FLOAT64),
    "brownian_vs_gd": ("BROWNIAN", {}, torch.float64, FLOAT64),
    "adam_instability_mnist": ("ADAM", {}, torch.float32, FLOAT32),
}


@pytest.mark.parametrize("module_name", sorted(SCRIPTS))
def test_train_on_cuda_agrees_with_the_cpu(tmp_path, monkeypatch, module_name):
    name, extra, dtype, tolerance = SCRIPTS[module_name]
    config = lifecycle_config(name, **extra)
    with default_dtype(dtype), ieee_float32():
        train(module_name, tmp_path / "cpu", config, cuda=False)
        with used_the_gpu(), cpu_random_streams(monkeypatch):
            train(module_name, tmp_path / "cuda", config, cuda=True)
    assert_close_runs(tmp_path / "cpu", tmp_path / "cuda", tolerance, hint=cuda_generator_hint())


@pytest.mark.parametrize("module_name,extra", [("falsification", ["--datasets", "offline"]),
                                               ("interventions_sweep", [])])
def test_a_sweep_cell_on_cuda_agrees_with_the_cpu(tmp_path, monkeypatch, module_name, extra):
    with default_dtype(torch.float64):
        cpu = run_sweep_cell(module_name, tmp_path / "cpu", cuda=False, extra=extra)
        with used_the_gpu(), cpu_random_streams(monkeypatch):
            gpu = run_sweep_cell(module_name, tmp_path / "cuda", cuda=True, extra=extra)
    assert_close_runs(cpu, gpu, FLOAT64, hint=cuda_generator_hint())


def atari_config(**overrides):
    """test_lifecycle's Breakout run, lengthened to 300 agent steps."""
    return lifecycle_config("ATARI", **{"total_frames": 4 * 300, **overrides})


def test_atari_on_cuda_agrees_with_the_cpu(tmp_path, monkeypatch):
    with ieee_float32():
        train("ddqn_atari_layernorm", tmp_path / "cpu", atari_config(), cuda=False)
        with used_the_gpu(), cpu_random_streams(monkeypatch):
            train("ddqn_atari_layernorm", tmp_path / "cuda", atari_config(), cuda=True)
    assert_atari_runs_agree(tmp_path / "cpu", tmp_path / "cuda")


# --------------------------------------------------------------------------- 2. SIGTERM and resume, bit for bit
def interrupt_when_logged(run_dir, step):
    """A thread that sends SIGTERM to this process once ``run_dir``'s metrics.jsonl has a row at ``step`` or later."""
    path = os.path.join(run_dir, "metrics.jsonl")

    def watch():
        deadline = time.time() + 600
        while time.time() < deadline:
            if os.path.exists(path):
                with open(path) as f:
                    steps = [json.loads(line)["step"] for line in f if line.endswith("\n")]
                if steps and max(steps) >= step:
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# (module, configuration, its steps, the step after which SIGTERM is sent)
RESUMABLE = {
    "dqn_classification_mdp": (lambda: lifecycle_config("DQN", total_steps=1_000, probe_every=200, redo=True,
                                                        shrink_perturb=True), 1_000, 100),
    "ddqn_atari_layernorm": (lambda: atari_config(total_frames=4 * 600), 600, 150),
}


@pytest.mark.parametrize("module_name", sorted(RESUMABLE))
def test_sigterm_and_resume_on_cuda_is_bit_identical(tmp_path, module_name):
    make_config, total, at = RESUMABLE[module_name]
    config = {**make_config(), "cuda": True}
    straight, split = tmp_path / "straight", tmp_path / "split"
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a late signal must not end pytest
    try:
        with deterministic(), used_the_gpu():
            train(module_name, straight, config)
            watcher = interrupt_when_logged(split, at)
            first = train(module_name, split, config)
            watcher.join(timeout=60)
            assert first["status"] == "interrupted" and at <= first["steps"] < total, \
                f"the signal did not stop the run between steps {at} and {total}: {first['status']}, {first['steps']}"
            if HAS_GPU:  # a CUDA generator's state is 16 bytes (seed and offset)
                assert any(t.dtype == torch.uint8 and t.shape == (16,) for t in checkpoint_tensors(split).values()), \
                    "the checkpoint holds no CUDA generator state"
            torch.manual_seed(12345)  # the resumed run must take every RNG state from the checkpoint
            if HAS_GPU:
                torch.cuda.manual_seed_all(12345)
            second = train(module_name, split, {**config, "resume": True})
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert second["status"] == "completed" and second["steps"] == total
    assert_identical_runs(straight, split)


# ----------------------------------------------------------------------------- 3. --num-seeds 3 on the GPU
def run_dirs(combined, run_dir, seeds):
    """Each seed's directory: from the combined summary's runs, else <run-dir>__seed<seed> (the Args' docstring)."""
    from common.runtime.rundir import seed_run_dir

    if isinstance(combined, dict) and "runs" in combined:
        return [s["run_dir"] for s in combined["runs"]]
    return [seed_run_dir(run_dir, seed) for seed in seeds]


def test_three_seeds_on_cuda_equal_three_single_runs(tmp_path):
    """In float64: vmapped and plain products round differently (test_seeds.py)."""
    config = lifecycle_config("DQN", reset_last_layer=True, shrink_perturb=True, redo=True, cuda=True, seed=3)
    with default_dtype(torch.float64), used_the_gpu():
        combined = train("dqn_classification_mdp", tmp_path / "multi", config, num_seeds=3)
        assert combined["status"] == "completed"
        for seed, multi in zip((3, 4, 5), run_dirs(combined, tmp_path / "multi", (3, 4, 5)), strict=True):
            train("dqn_classification_mdp", tmp_path / f"single{seed}", config, seed=seed)
            assert_close_runs(tmp_path / f"single{seed}", multi, dict(rtol=1e-9, atol=1e-12))


def test_three_atari_seeds_on_cuda_equal_three_single_runs(tmp_path):
    module = script("ddqn_atari_layernorm")
    if "num_seeds" not in {f.name for f in dataclasses.fields(module.Args)}:
        pytest.skip("ddqn_atari_layernorm.Args has no num_seeds field yet")
    config = atari_config(cuda=True, seed=3)
    with ieee_float32(), used_the_gpu():
        combined = train("ddqn_atari_layernorm", tmp_path / "multi", config, num_seeds=3)
        assert combined["status"] == "completed"
        for seed, multi in zip((3, 4, 5), run_dirs(combined, tmp_path / "multi", (3, 4, 5)), strict=True):
            train("ddqn_atari_layernorm", tmp_path / f"single{seed}", config, seed=seed)
            assert_atari_runs_agree(tmp_path / f"single{seed}", multi)


# ------------------------------------------------------------------------------------------ 4. no hidden syncs
def project_line():
    """The innermost frame of the project's own code (not the tests) on the current stack, as file:line."""
    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if path.startswith(ROOT + os.sep) and os.sep + "tests" + os.sep not in path:
            return f"{os.path.relpath(path, ROOT)}:{frame.lineno}: {frame.line}"
    return "outside the project"


@contextlib.contextmanager
def counted_syncs():
    """Count the block's host syncs by project line, in sync debug mode "warn"."""
    sites = collections.Counter()

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message).lower():
            sites[project_line()] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield sites
        finally:
            torch.cuda.set_sync_debug_mode(0)


@needs_gpu
def test_allowed_sync_permits_only_the_syncs_it_wraps():
    from common.runtime.sync import allowed_sync

    x = torch.arange(4.0, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):
            x.sum().item()
        with allowed_sync():
            assert x.sum().item() == 6.0
        assert torch.cuda.get_sync_debug_mode() == 2  # put back
    finally:
        torch.cuda.set_sync_debug_mode(0)
    with counted_syncs() as sites:  # the counter sees what the loops would hide
        x.sum().item()
    assert sum(sites.values()) >= 1


LOOPS = {  # (module, configuration at `steps` agent steps): no probes, measurements or periodic checkpoints
    "dqn_classification_mdp": lambda steps: lifecycle_config("DQN", total_steps=steps, probe_every=0, log_every=50,
                                                             target_period=50, checkpoint_every=0, cuda=True),
    "ddqn_atari_layernorm": lambda steps: lifecycle_config("ATARI", total_frames=4 * steps, eval_every=10**9,
                                                           grad_cov_every=0, hessian_every=0, log_every=50,
                                                           checkpoint_every=0, cuda=True),
}


@needs_gpu
@pytest.mark.parametrize("module_name", sorted(LOOPS))
def test_the_loop_makes_no_host_sync_outside_allowed_sync(tmp_path, module_name):
    counts = []
    for steps in (200, 400):
        with counted_syncs() as sites:
            result = train(module_name, tmp_path / str(steps), LOOPS[module_name](steps))
        assert result["status"] == "completed"
        counts.append(sites)
    grown = {site: (counts[0][site], n) for site, n in counts[1].items() if n > counts[0][site]}
    assert not grown, "host syncs that grow with the run's length (200 steps, 400 steps), outside allowed_sync: " + \
        "; ".join(f"{site} ({a} -> {b})" for site, (a, b) in grown.items())
