"""common/analysis/sweep.py: the grid, the command line, and the per-cell lifecycle (skip, resume, move aside)."""
import dataclasses
import json
import os
import signal
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest

from common.analysis import sweep
from common.errors import UsageError


@dataclass
class ToyArgs:
    exp_name: str = "toy"
    seed: int = 1
    run_dir: Optional[str] = None
    resume: bool = False
    total_steps: int = 10
    learning_rate: float = 0.1
    cuda: bool = True
    variant: str = "a"
    num_seeds: int = 1
    widths: Tuple[int, ...] = (1, 2)


class ToyTrain:
    """Stands in for an agent's train(): records its calls and writes the run directory it is told to."""

    def __init__(self, status="completed", signal_after=None, total="total_steps"):
        self.calls, self.status, self.signal_after, self.total = [], status, signal_after, total

    def __call__(self, args):
        self.calls.append(args)
        os.makedirs(args.run_dir, exist_ok=True)
        with open(os.path.join(args.run_dir, "args.json"), "w") as f:
            json.dump(vars(args), f)
        if self.status == "interrupted":
            open(os.path.join(args.run_dir, "checkpoint.pt"), "w").close()
        length = getattr(args, self.total)  # as Run(args, total=...) writes it
        summary = {"status": self.status, "steps": length, "total": {self.total: length},
                   "metrics": {"probe/plasticity_loss": 0.5}}
        with open(os.path.join(args.run_dir, "summary.json"), "w") as f:
            json.dump(summary, f)
        if self.signal_after is not None:  # a signal that arrives once the cell is done
            os.kill(os.getpid(), self.signal_after)
        return summary


# An agent whose run length is another field (``Run(args, total="num_iterations")``): ToyArgs with total_steps renamed
ToyIterationArgs = dataclasses.make_dataclass("ToyIterationArgs", [
    ("num_iterations" if f.name == "total_steps" else f.name, f.type, dataclasses.field(default=f.default))
    for f in dataclasses.fields(ToyArgs)])


def toy_sweep(train, args_cls=ToyArgs):
    grid = sweep.Grid("toy", {"variant": sweep.values("variant", ["a", "b"]),
                              "seed": sweep.values("seed", [1, 2, 3], label=lambda s: f"seed{s}")},
                      exclude=({"variant": "b", "seed": "seed3"},))
    return sweep.Sweep(make_grid=lambda options: grid, presets={"default": {}, "short": {"total_steps": 4}},
                       analyze=lambda runs_dir, options: None, train=train, args_cls=args_cls)


def test_grid_is_the_product_less_exclusions_last_axis_fastest():
    grid = sweep.Grid("g", {"x": {"p": {"a": 1}, "q": {"a": 2, "b": 5}}, "y": sweep.values("c", [7, 8, 9])},
                      exclude=({"x": "q", "y": "8"},))
    cells = grid.cells()
    assert [c.name for c in cells] == ["p__7", "p__8", "p__9", "q__7", "q__9"]
    assert [c.index for c in cells] == list(range(5))
    assert cells[4].overrides == {"a": 2, "b": 5, "c": 9} and cells[4].labels == {"x": "q", "y": "9"}
    assert grid.varied_fields() == {"a", "b", "c"}
    with pytest.raises(AssertionError):
        sweep.Grid("g", {"x": {"p": {}}}, exclude=({"x": "nope"},))


def test_parse_tasks_and_set():
    assert sweep.parse_tasks("0-2,5,2", 6) == [0, 1, 2, 5]
    for bad in ("6", "0-9", "x", "1-"):
        with pytest.raises(UsageError):
            sweep.parse_tasks(bad, 6)
    assert sweep.parse_set(["total_steps=7", "learning-rate=0.5", "cuda=False", "variant=b c"], ToyArgs, {}) == \
        {"total_steps": 7, "learning_rate": 0.5, "cuda": False, "variant": "b c"}
    assert sweep.parse_set(["widths=3 4"], ToyArgs, {}) == {"widths": (3, 4)}  # tyro's own typing of a tuple
    for bad in (["seed=3"], ["run_dir=x"], ["num_seeds=3"], ["resume=True"], ["exp_name=x"], ["variant=b"],
                ["nope=1"], ["total_steps=1.5"], ["cuda=maybe"], ["total_steps"], ["widths=1 x"],
                ["total_steps="]):
        with pytest.raises(UsageError) as error:
            sweep.parse_set(bad, ToyArgs, {"variant"})
        assert "\n" not in str(error.value) and bad[0].split("=")[0] in str(error.value)


def test_list_and_task_selection(tmp_path, capsys, monkeypatch):
    train = ToyTrain()
    assert sweep.run(toy_sweep(train), ["--list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["0 a__seed1", "1 a__seed2", "2 a__seed3", "3 b__seed1",
                                                    "4 b__seed2"]
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert sweep.run(toy_sweep(train), ["--runs-dir", str(tmp_path)]) == 2  # no task given
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert sweep.run(toy_sweep(train), ["--runs-dir", str(tmp_path), "--preset", "short"]) == 0
    (args,) = train.calls
    assert (args.variant, args.seed, args.total_steps, args.exp_name, args.resume) == ("b", 1, 4, "toy", False)
    assert args.run_dir == os.path.join(str(tmp_path), "toy", "b__seed1")
    assert sweep.run(toy_sweep(train), ["--runs-dir", str(tmp_path), "--task-id", "9"]) == 2


def test_completed_cells_are_skipped_and_interrupted_ones_resume(tmp_path):
    runs = ["--runs-dir", str(tmp_path)]
    train = ToyTrain("interrupted")
    assert sweep.run(toy_sweep(train), runs + ["--tasks", "0-4"]) == 75  # stops at the first interruption
    assert len(train.calls) == 1 and not train.calls[0].resume
    train.status = "completed"
    assert sweep.run(toy_sweep(train), runs + ["--tasks", "0-1"]) == 0
    assert [a.resume for a in train.calls[1:]] == [True, False]  # cell 0 resumed, cell 1 started
    assert sweep.run(toy_sweep(train), runs + ["--tasks", "0-1"]) == 0
    assert len(train.calls) == 3  # both completed: skipped
    assert sweep.run(toy_sweep(train), runs + ["--tasks", "0", "--set", "total_steps=20"]) == 0
    assert train.calls[-1].resume and train.calls[-1].total_steps == 20  # total raised: continue the run


def test_the_length_a_cell_trained_to_is_the_field_its_summary_names(tmp_path, capsys):
    """A sweep reads the run's length from summary.json's ``total``, whatever the agent's field is called."""
    runs = ["--runs-dir", str(tmp_path), "--tasks", "0"]
    train = ToyTrain("interrupted", total="num_iterations")
    assert sweep.run(toy_sweep(train, ToyIterationArgs), runs) == 75
    train.status = "completed"
    assert sweep.run(toy_sweep(train, ToyIterationArgs), runs) == 0
    assert sweep.run(toy_sweep(train, ToyIterationArgs), runs + ["--set", "num_iterations=5"]) == 0
    assert len(train.calls) == 2  # completed to 10: nothing to do at 10 or 5
    assert sweep.run(toy_sweep(train, ToyIterationArgs), runs + ["--set", "num_iterations=20"]) == 0
    assert train.calls[-1].resume and train.calls[-1].num_iterations == 20  # raised: continue from the checkpoint
    os.remove(tmp_path / "toy" / "a__seed1" / "checkpoint.pt")
    capsys.readouterr()
    assert sweep.run(toy_sweep(train, ToyIterationArgs), runs + ["--set", "num_iterations=30"]) == 0
    assert len(train.calls) == 3  # raised, but no checkpoint to go on from: skipped, and said so
    assert "no checkpoint.pt to train on to num_iterations 30" in capsys.readouterr().out


def test_a_value_tyro_refuses_is_one_line_naming_the_field_and_its_type(capsys):
    for bad, expected in ((["total_steps=1.5"], "--set total_steps=1.5: not a value of ToyArgs.total_steps, int"),
                          (["widths=1 x"], "--set widths=1 x: not a value of ToyArgs.widths, Tuple[int, ...]"),
                          (["run_dir"], "--set 'run_dir': give FIELD=VALUE with a field of ToyArgs")):
        with pytest.raises(UsageError) as error:
            sweep.parse_set(["cuda=false", *bad], ToyArgs, {})
        assert str(error.value) == expected
    assert capsys.readouterr().err == ""  # tyro's own report, which names no --set, is not shown


def test_a_cell_without_summary_or_checkpoint_is_moved_aside(tmp_path):
    cell_dir = tmp_path / "toy" / "a__seed2"
    cell_dir.mkdir(parents=True)
    (cell_dir / "metrics.jsonl").write_text('{"step": 3}\n')
    train = ToyTrain()
    assert sweep.run(toy_sweep(train), ["--runs-dir", str(tmp_path), "--task-id", "1"]) == 0
    assert not train.calls[0].resume
    (stale,) = [p for p in os.listdir(tmp_path / "toy") if p.startswith("a__seed2.stale-")]
    assert (tmp_path / "toy" / stale / "metrics.jsonl").read_text() == '{"step": 3}\n'
    assert json.loads((cell_dir / "summary.json").read_text())["status"] == "completed"


def test_diverged_cells_exit_3_and_are_not_rerun(tmp_path):
    train = ToyTrain("diverged")
    runs = ["--runs-dir", str(tmp_path), "--tasks", "0-1"]
    assert sweep.run(toy_sweep(train), runs) == 3
    assert sweep.run(toy_sweep(train), runs) == 3
    assert len(train.calls) == 2


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_a_signal_between_cells_stops_the_range_with_75(tmp_path, signum):
    previous = signal.getsignal(signum)
    train = ToyTrain(signal_after=signum)
    assert sweep.run(toy_sweep(train), ["--runs-dir", str(tmp_path), "--tasks", "0-4"]) == 75
    assert len(train.calls) == 1  # the finished cell is kept, no new one started
    assert signal.getsignal(signum) is previous
    train.signal_after = None
    assert sweep.run(toy_sweep(train), ["--runs-dir", str(tmp_path), "--tasks", "0-4"]) == 0
    assert len(train.calls) == 5  # the requeued range skips cell 0 and runs the other four


def test_ranges_and_array_indices_that_say_nothing_are_usage_errors(tmp_path, monkeypatch, capsys):
    train, runs = ToyTrain(), ["--runs-dir", str(tmp_path)]
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    for bad in (["--tasks", "3-1"], ["--tasks", ""], ["--tasks", "1", "--task-id", "3"]):
        assert sweep.run(toy_sweep(train), runs + bad) == 2, bad
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert sweep.run(toy_sweep(train), runs + ["--tasks", "0"]) == 2  # every array task would run cell 0
    assert sweep.run(toy_sweep(train), runs + ["--task-id", "1"]) == 2
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "abc")
    assert sweep.run(toy_sweep(train), runs) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 6 and all(line.startswith("error: ") for line in errors), errors
    assert "reversed" in errors[0] and "SLURM_ARRAY_TASK_ID" in errors[3] and "'abc'" in errors[5]
    assert train.calls == []
    assert sweep.run(toy_sweep(train), runs + ["--set", "num_seeds=3", "--task-id", "0"]) == 2


# ---------------------------------------------------------------------------- the real agent: packs of seeds
def falsification_argv(tmp_path, data_dir, *extra):
    return ["--preset", "test", "--datasets", "offline", "--runs-dir", str(tmp_path), "--set",
            f"data_dir={data_dir}", *extra]


def cell_dir(tmp_path, seed):
    return tmp_path / "falsification" / f"mnist__true_label__mlp__adam__seed{seed}"


def interrupt_at_second_probe(monkeypatch):
    import dqn_classification_mdp as dqn

    original, calls = dqn.probe_plasticity, []

    def probe(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(dqn, "probe_plasticity", probe)


def test_a_pack_of_seeds_in_mixed_states_resumes_each_from_where_it_is(tmp_path, data_dir, monkeypatch, capsys):
    """Seed 1 completed (and its checkpoint deleted), seed 2 interrupted at step 20, seed 3 never started: the pack
    keeps seed 1 as it is, resumes seed 2 and starts seed 3."""
    import falsification

    assert sweep.run(falsification.SWEEP, falsification_argv(tmp_path, data_dir, "--tasks", "0")) == 0
    os.remove(cell_dir(tmp_path, 1) / "checkpoint.pt")
    with monkeypatch.context() as m:
        interrupt_at_second_probe(m)
        assert sweep.run(falsification.SWEEP, falsification_argv(tmp_path, data_dir, "--tasks", "1")) == 75
    before = {name: (cell_dir(tmp_path, 1) / name).read_bytes() for name in ("summary.json", "metrics.jsonl")}
    pack = falsification_argv(tmp_path, data_dir, "--seeds-per-task", "4", "--tasks", "0")
    capsys.readouterr()
    assert sweep.run(falsification.SWEEP, pack) == 0
    assert "cell 1 mnist__true_label__mlp__adam__seed2: resuming from checkpoint.pt (step 20)" in \
        capsys.readouterr().out  # the step read from the checkpoint (run.checkpoint_step)
    assert {name: (cell_dir(tmp_path, 1) / name).read_bytes() for name in before} == before  # not retrained
    summaries = [json.loads((cell_dir(tmp_path, seed) / "summary.json").read_text()) for seed in (1, 2, 3, 4)]
    assert [(s["status"], s["steps"], s["resumes"]) for s in summaries] == \
        [("completed", 40, [])] * 1 + [("completed", 40, [20])] + [("completed", 40, [])] * 2
    assert not list((tmp_path / "falsification").glob("*.stale-*"))
    from common.analysis import results

    assert len(results.read_runs(str(tmp_path))) == 4


def test_a_completed_cell_is_never_moved_aside_and_a_stale_copy_never_counted(tmp_path, data_dir):
    """Seed 1 completed without its checkpoint, seed 2 killed before its first checkpoint, seeds 3-4 never started:
    seed 1 is kept, seed 2 moved aside and retrained with 3 and 4, and the analysis reads four runs, not five."""
    import falsification

    assert sweep.run(falsification.SWEEP, falsification_argv(tmp_path, data_dir, "--tasks", "0-1")) == 0
    os.remove(cell_dir(tmp_path, 1) / "checkpoint.pt")
    for name in ("checkpoint.pt", "summary.json"):  # seed 2 as a kill before its first checkpoint leaves it
        os.remove(cell_dir(tmp_path, 2) / name)
    before = (cell_dir(tmp_path, 1) / "metrics.jsonl").read_bytes()
    pack = falsification_argv(tmp_path, data_dir, "--seeds-per-task", "4", "--tasks", "0")
    assert sweep.run(falsification.SWEEP, pack) == 0
    assert (cell_dir(tmp_path, 1) / "metrics.jsonl").read_bytes() == before
    (stale,) = (tmp_path / "falsification").glob("*.stale-*")
    assert stale.name.startswith(cell_dir(tmp_path, 2).name)
    from common.analysis import results

    runs = results.read_runs(str(tmp_path))
    assert len(runs) == 4 and runs.skipped == [(str(stale), "a stale copy the sweep moved aside")]
    assert len(results.read_runs(str(tmp_path), exp_name="falsification")) == 4  # what analyze reads
    assert sweep.run(falsification.SWEEP, pack) == 0  # and nothing more to do


def test_a_torn_metrics_row_is_dropped_when_the_cell_resumes(tmp_path, data_dir, monkeypatch):
    import falsification

    with monkeypatch.context() as m:
        interrupt_at_second_probe(m)
        assert sweep.run(falsification.SWEEP, falsification_argv(tmp_path, data_dir, "--tasks", "0")) == 75
    metrics = cell_dir(tmp_path, 1) / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 30, "losses/td_loss": 0.1')  # a kill in the middle of a write, after the checkpoint
    assert sweep.run(falsification.SWEEP, falsification_argv(tmp_path, data_dir, "--tasks", "0")) == 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
             if "losses/td_loss" in json.loads(line)]
    assert steps == [10, 20, 30, 40]
