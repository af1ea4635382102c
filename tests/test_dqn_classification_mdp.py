import ast
import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import types

import pytest
import torch

import dqn_classification_mdp as dqn
from common.analysis.validity import NOT_PROTOCOL
from common.errors import EXIT_INTERRUPTED
from common.runtime.run import MAY_CHANGE_ON_RESUME
from common.runtime.seeds import Generators, OneSeed, SeedStack, StackedReplay
from test_data import write_tiny_cifar10

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(total_steps=40, learning_starts=20, buffer_size=500, batch_size=8, width=16, log_every=10,
            target_period=10, probe_every=20, probe_steps=6, probe_targets=2, probe_inputs=32,
            probe_batch_size=8, ref_probe_inputs=48, num_images=500, cuda=False)


def test_double_q_target_against_a_hand_computation():
    images = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1)  # observation i is the scalar i
    online = torch.tensor([[1.0, 2.0], [5.0, 1.0], [0.0, 3.0]])  # Q-values per observation
    target = torch.tensor([[0.5, 0.5], [7.0, 9.0], [4.0, 6.0]])

    class Table(torch.nn.Module):
        def __init__(self, table):
            super().__init__()
            self.table = torch.nn.Parameter(table.clone())

        def forward(self, x):
            return self.table[x.flatten().long()]

        values = staticmethod(lambda out: out)
        loss = staticmethod(lambda out, y: (out - y) ** 2)

    batch = tuple(b[None] for b in (torch.tensor([0, 0]), torch.tensor([1, 0]), torch.tensor([1.0, 0.0]),
                                    torch.tensor([1, 2])))  # one seed: (1, batch)
    q, target_q = SeedStack([Table(online)]), SeedStack([Table(target)])  # as training calls them
    loss, _ = dqn.td_loss(q, target_q, images, batch, gamma=0.5, double_q=True)
    # next obs 1: online argmax is action 0, target value 7 -> 1 + 0.5 * 7 = 4.5; Q(0, 1) = 2
    # next obs 2: online argmax is action 1, target value 6 -> 0 + 0.5 * 6 = 3.0; Q(0, 0) = 1
    assert loss.item() == pytest.approx(((2 - 4.5) ** 2 + (1 - 3.0) ** 2) / 2)
    loss, _ = dqn.td_loss(q, target_q, images, batch, gamma=0.5, double_q=False)
    assert loss.item() == pytest.approx(((2 - (1 + 0.5 * 9)) ** 2 + (1 - 0.5 * 6) ** 2) / 2)
    one = dqn.td_loss(OneSeed(Table(online)), OneSeed(Table(target)), images, batch, 0.5, True, train=False)[0]
    assert one.item() == pytest.approx(((2 - 4.5) ** 2 + (1 - 3.0) ** 2) / 2)  # the statistics' loss


def test_build_optimizer_gives_rmsprop_its_own_flags_and_every_optimizer_weight_decay():
    param = [torch.nn.Parameter(torch.zeros(2))]
    group = dqn.build_optimizer(dqn.Args(optimizer="rmsprop", weight_decay=1e-3), param).param_groups[0]
    assert (group["eps"], group["decay"], group["centered"]) == (0.01 / 32**2, 0.95, True)  # DQN Zoo
    assert group["weight_decay"] == 1e-3
    args = dqn.Args(optimizer="rmsprop", rmsprop_eps=1e-4, rmsprop_decay=0.9, rmsprop_centered=False)
    group = dqn.build_optimizer(args, param).param_groups[0]
    assert (group["eps"], group["decay"], group["centered"]) == (1e-4, 0.9, False)
    for name in ("adam", "sgd"):
        assert dqn.build_optimizer(dqn.Args(optimizer=name, weight_decay=1e-3), param).param_groups[0][
            "weight_decay"] == 1e-3


def _network_with_running_statistics(arch, images):
    torch.manual_seed(0)
    network = dqn.build_q_network(dqn.Args(arch=arch), tuple(images.shape[1:]))
    with torch.no_grad():
        for _ in range(3):
            network(images)  # train-mode forwards: BatchNorm's running statistics move away from (0, 1)
    return network


@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_acting_uses_eval_mode_values_that_do_not_depend_on_the_batch(arch):
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    network = _network_with_running_statistics(arch, images)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    obs, generator = torch.arange(len(images)), torch.Generator().manual_seed(0)
    network.eval()
    with torch.no_grad():
        reference = network(images)  # eval mode: BatchNorm on running statistics, no dropout
    network.train()
    stack = SeedStack([network])  # the agent acts through the seeds' stack (here one seed); network views it

    def act(obs):
        return dqn.act(stack, images, obs[None], 0.0, Generators([generator]))[0]

    one_by_one = torch.cat([act(obs[i:i + 1]) for i in range(len(obs))])
    assert torch.equal(one_by_one, reference.argmax(1))
    assert torch.equal(act(obs), reference.argmax(1))
    assert network.training  # the agent trains in train mode; acting leaves it there
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())  # no running-stat updates


@pytest.mark.parametrize("arch", ["resnet18", "vit"])
def test_bootstrap_targets_use_eval_mode(arch):
    """The TD loss training uses: its targets come from eval-mode forwards (no dropout, BatchNorm on running
    statistics), so they do not depend on the batch an image comes in, and the online forward trains in train mode."""
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    online = _network_with_running_statistics(arch, images)
    target = _network_with_running_statistics(arch, images.flip(0))
    rewards, actions = torch.linspace(0, 1, len(images)), torch.arange(len(images)) % 10
    with torch.no_grad():
        online_values, target_values = online.eval()(images), target.eval()(images)
    online.train(), target.train()
    expected = rewards + 0.9 * target_values.gather(1, online_values.argmax(1, keepdim=True)).squeeze(1)
    obs = torch.arange(len(images))
    for rows in (slice(None), slice(0, 3), slice(4, 5)):  # targets do not depend on the batch an image comes in
        torch.manual_seed(0)  # the ViT's dropout in the trained forward: the same masks in both
        with torch.no_grad():
            taken = copy.deepcopy(online).train()(images[rows])[torch.arange(len(obs[rows])), actions[rows]]
        q, target_stack = SeedStack([copy.deepcopy(online)]), SeedStack([copy.deepcopy(target)])  # as training
        torch.manual_seed(0)
        batch = tuple(b[None, rows] for b in (obs, actions, rewards, obs))
        loss = dqn.td_loss(q, target_stack, images, batch, 0.9, True)[0]
        torch.testing.assert_close(loss[0], (taken - expected[rows]).square().mean(), rtol=1e-4, atol=1e-5)


def test_probing_does_not_change_the_agent(tmp_path, data_dir):
    """The agent's weights after N steps are bit-identical whatever the probe settings."""
    common = dict(data_dir=data_dir, **{**TINY, "total_steps": 30, "checkpoint_every": 30})
    for name, probe_every in (("unprobed", 0), ("probed", 10)):
        dqn.train(dqn.Args(run_dir=str(tmp_path / name), **{**common, "probe_every": probe_every}))
    a, b = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=False) for name in ("unprobed", "probed"))
    assert a["step"] == b["step"] == 30
    for key in a["q_network"]:
        assert torch.equal(a["q_network"][key], b["q_network"][key]), key
    assert all(torch.equal(a["replay"][k], b["replay"][k]) for k in ("obs", "actions", "rewards", "next_obs"))


def test_a_probe_is_seeded_by_run_seed_and_step_and_leaves_the_global_rng_alone():
    """The same run seed and step give the same probe, another step another; the ViT's dropout in the probe's fits
    draws from the probe's own generator, so the global RNG (the agent's initialisations) is left as it was."""
    args = dqn.Args(arch="vit", probe_steps=3, probe_targets=2, probe_inputs=8, probe_batch_size=4,
                    hessian_batch_size=4, hessian_iters=3)
    images = torch.randint(0, 256, (16, 1, 9, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    replay = StackedReplay(1, 16, "cpu")
    replay.add(torch.arange(16)[None], torch.zeros(1, 16, dtype=torch.long), torch.zeros(1, 16), torch.arange(16)[None])
    q, target = SeedStack([dqn.build_q_network(args, (1, 9, 9))]), SeedStack([dqn.build_q_network(args, (1, 9, 9))])
    rng = torch.get_rng_state()
    initial = {name: p.detach().clone() for name, p in q.params.items()}
    seed = types.SimpleNamespace(index=0, seed=1, probes=[])
    (first, first_curve), (again, again_curve), (later, later_curve) = (
        dqn.probe_plasticity(args, q, target, images, replay, initial, [seed], step)[0] for step in (5, 5, 6))
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(first_curve, again_curve) and not torch.equal(first_curve, later_curve)
    stats, stats_again = first, again
    assert "curvature/hessian_top" in stats and all(torch.equal(stats[k], stats_again[k]) for k in stats)


def test_the_reference_probe_leaves_the_papers_probe_as_it_was():
    """The reference probe draws its inputs and minibatches from seeds of its own: the paper's probe gives the same
    numbers with and without it; the reference probe's task is the same at every probe of a run, and whatever the
    agent's optimizer (Adam at its own rate)."""
    images = torch.randint(0, 256, (64, 1, 9, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    replay = StackedReplay(1, 64, "cpu")
    replay.add(torch.arange(64)[None], torch.zeros(1, 64, dtype=torch.long), torch.zeros(1, 64), torch.arange(64)[None])
    rows = {}
    for name, extra in (("with", {}), ("without", dict(ref_probe=False)), ("sgd", dict(optimizer="sgd")),
                        ("two_hot", dict(two_hot=True))):
        args = dqn.Args(width=16, probe_steps=4, probe_targets=2, probe_inputs=16, ref_probe_inputs=24,
                        probe_batch_size=4, stats=False, hessian=False, **extra)
        torch.manual_seed(0)
        q, target = (SeedStack([dqn.build_q_network(args, (1, 9, 9))]) for _ in range(2))
        seed = types.SimpleNamespace(index=0, seed=1, probes=[])
        rows[name] = dqn.probe_plasticity(args, q, target, images, replay, {}, [seed], 7)[0][0]
    assert not any(k.startswith("probe_ref/") for k in rows["without"])
    assert all(torch.equal(rows["with"][k], v) for k, v in rows["without"].items())
    assert rows["with"]["probe_ref/final_loss"] != rows["with"]["probe/final_loss"]
    # a fixed instrument: at another step, the paper's probe draws anew, the reference probe's task is the same
    args = dqn.Args(width=16, probe_steps=4, probe_targets=2, probe_inputs=16, ref_probe_inputs=24,
                    probe_batch_size=4, stats=False, hessian=False)
    torch.manual_seed(0)
    q, target = (SeedStack([dqn.build_q_network(args, (1, 9, 9))]) for _ in range(2))
    later = dqn.probe_plasticity(args, q, target, images, replay, {}, [types.SimpleNamespace(index=0, seed=1,
                                                                                          probes=[])], 8)[0][0]
    assert later["probe/final_loss"] != rows["with"]["probe/final_loss"]
    assert torch.equal(later["probe_ref/final_loss"], rows["with"]["probe_ref/final_loss"])
    # another agent optimizer changes the paper's probe only
    assert rows["sgd"]["probe/final_loss"] != rows["with"]["probe/final_loss"]
    assert torch.equal(rows["sgd"]["probe_ref/final_loss"], rows["with"]["probe_ref/final_loss"])


def _check_run_directory(run_dir, steps):
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["status"] == "completed" and summary["steps"] == steps
    assert json.load(open(os.path.join(run_dir, "args.json")))["total_steps"] == steps
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    logged = {k for row in rows for k in row}
    assert {"losses/td_loss", "losses/q_values", "charts/accuracy", "charts/reward_rate", "charts/SPS",
            "probe/final_loss", "probe/baseline", "probe/plasticity"} <= logged
    assert [r["step"] for r in rows if "probe/plasticity" in r] == list(range(0, steps + 1, 20))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir))
    assert os.path.getsize(os.path.join(run_dir, "figures", "fig4_probe_curves.png")) > 10_000
    assert os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
    probes = [r for r in rows if "probe/plasticity" in r]
    for row in probes:  # P / b: the fraction of the targets' variance the probe's fits explain
        assert row["probe/fit"] == pytest.approx(row["probe/plasticity"] / row["probe/baseline"], rel=1e-6)
    assert summary["metrics"]["probe/initial_fit"] == probes[0]["probe/fit"]
    assert summary["metrics"]["probe/final_fit"] == probes[-1]["probe/fit"] == summary["metrics"]["probe/fit"]
    assert all(row["probe/fit"] <= 1 for row in probes)  # P = b - final loss <= b
    for name in ("final_loss", "baseline", "plasticity", "plasticity_loss", "fit"):  # the reference probe beside it
        assert all(isinstance(row[f"probe_ref/{name}"], float) for row in probes)
    for row in probes:
        assert row["probe_ref/fit"] == pytest.approx(row["probe_ref/plasticity"] / row["probe_ref/baseline"], rel=1e-6)
        assert row["probe_ref/final_loss"] != row["probe/final_loss"]  # its own inputs, optimizer and seed
    assert summary["metrics"]["probe_ref/initial_fit"] == probes[0]["probe_ref/fit"]
    assert summary["metrics"]["probe_ref/final_fit"] == probes[-1]["probe_ref/fit"]
    curves = torch.load(os.path.join(run_dir, "probe_curves.pt"), weights_only=False)
    assert curves["steps"] == [r["step"] for r in probes] and curves["curves"].shape[0] == len(probes)
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f]  # written through a temporary file and a rename
    return summary


def test_smoke_run_on_real_mnist(tmp_path, data_dir):
    args = dqn.Args(data_dir=data_dir, run_dir=str(tmp_path / "run"), variant="sparse_reward", **TINY)
    summary = dqn.train(args)
    assert summary == _check_run_directory(str(tmp_path / "run"), 40)
    assert math.isfinite(summary["metrics"]["probe/plasticity_loss"])


def test_smoke_run_on_a_tiny_cifar_file(tmp_path):
    data = write_tiny_cifar10(str(tmp_path / "data"))
    args = dqn.Args(data_dir=data, dataset="cifar10", layer_norm=True, two_hot=True,
                    run_dir=str(tmp_path / "run"), **{**TINY, "num_images": 0})
    dqn.train(args)
    _check_run_directory(str(tmp_path / "run"), 40)


def test_resumed_run_is_identical_to_an_uninterrupted_one(tmp_path, data_dir):
    common = dict(data_dir=data_dir, **{**TINY, "total_steps": 40})
    straight = tmp_path / "straight"
    dqn.train(dqn.Args(run_dir=str(straight), **common))
    split = tmp_path / "split"
    dqn.train(dqn.Args(run_dir=str(split), **{**common, "total_steps": 20}))
    dqn.train(dqn.Args(run_dir=str(split), resume=True, **common))
    a, b = (torch.load(p / "checkpoint.pt", weights_only=False) for p in (straight, split))
    assert a["step"] == b["step"] == 40
    for key in a["q_network"]:
        assert torch.equal(a["q_network"][key], b["q_network"][key]), key
    assert all(torch.equal(a["replay"][k], b["replay"][k]) for k in ("obs", "actions", "rewards", "next_obs"))


def _cli(*argv, **kwargs):
    return subprocess.run([sys.executable, "dqn_classification_mdp.py", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, **kwargs)


@pytest.mark.parametrize("argv,flag", [(["--variant", "hard"], "--variant"), (["--arch", "mlp2"], "--arch"),
                                       (["--total-steps", "0"], "--total-steps"),
                                       (["--dataset", "mnist", "--data-dir", "/nonexistent-data"], "--data-dir")])
def test_bad_input_is_a_one_line_error(argv, flag):
    result = _cli(*argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and flag in lines[0], result.stderr


# Where a default comes from: the paper (Sec 3.1, A.2, Fig 4, eq. 5), a named code base or author, or a statement
# that the paper gives none ("not given") or that the choice is ours.
SOURCE = re.compile(r"\b(Sec|Fig|eq)\.? ?\d|\b[AB]\.\d|et al\.|CleanRL|DQN Zoo|dopamine|optax|PyHessian|Haiku|"
                    r"ale[-_]py|\w/\w+|not given|paper gives none|not in the paper|beyond the paper|deviation|"
                    r"\bours\b|measured", re.IGNORECASE)
# Fields that say where, how or how observably a run runs, not what it computes (validity.NOT_PROTOCOL and the
# fields that may change on resume): a source is not asked of them.
NOT_SCIENCE = set(NOT_PROTOCOL) | set(MAY_CHANGE_ON_RESUME)


def field_docstrings(script):
    """``{field: docstring or None}`` of the script's ``Args``, read from its source as tyro reads them."""
    body = next(node for node in ast.parse(open(os.path.join(ROOT, script)).read()).body
                if isinstance(node, ast.ClassDef) and node.name == "Args").body
    return {node.target.id: (body[k + 1].value.value if k + 1 < len(body) and isinstance(body[k + 1], ast.Expr)
                             and isinstance(body[k + 1].value, ast.Constant) else None)
            for k, node in enumerate(body) if isinstance(node, ast.AnnAssign)}


@pytest.mark.parametrize("script", ["dqn_classification_mdp.py", "adam_instability_mnist.py", "brownian_vs_gd.py",
                                    "ddqn_atari_layernorm.py"])
def test_every_field_has_a_docstring_naming_its_source(script):
    docs = field_docstrings(script)
    assert len(docs) > 10
    assert [field for field, doc in docs.items() if not (doc or "").strip()] == []  # --help shows each
    assert [field for field, doc in docs.items() if field not in NOT_SCIENCE and not SOURCE.search(doc)] == []


def test_a_field_without_a_source_is_found(tmp_path, monkeypatch):
    (tmp_path / "toy.py").write_text('class Args:\n    gamma: float = 0.9\n    """discount"""\n    seed: int = 1\n'
                                     '    width: int = 512\n    """A.2: 512"""\n    depth: int = 2\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    docs = field_docstrings("toy.py")
    assert docs == {"gamma": "discount", "seed": None, "width": "A.2: 512", "depth": None}
    assert [field for field, doc in docs.items() if doc and not SOURCE.search(doc)] == ["gamma"]


def test_sigterm_checkpoints_and_resume_finishes(tmp_path, data_dir):
    run_dir = str(tmp_path / "run")
    argv = ["--data-dir", data_dir, "--run-dir", run_dir, "--no-cuda", "--width", "16", "--num-images", "500",
            "--learning-starts", "20", "--batch-size", "8", "--log-every", "10", "--probe-every", "0"]
    process = subprocess.Popen([sys.executable, "dqn_classification_mdp.py", *argv, "--total-steps", "10000000"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + 90
    while not (os.path.exists(metrics) and os.path.getsize(metrics) > 0) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == EXIT_INTERRUPTED, process.stderr.read()
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)
    assert summary["status"] == "interrupted" and checkpoint["step"] == summary["steps"] > 0
    resumed = _cli(*argv, "--resume", "--total-steps", str(summary["steps"] + 10))
    assert resumed.returncode == 0, resumed.stderr
    assert json.load(open(os.path.join(run_dir, "summary.json")))["steps"] == summary["steps"] + 10


def test_divergence_is_recorded_and_the_run_exits_cleanly(tmp_path, data_dir):
    args = dqn.Args(data_dir=data_dir, run_dir=str(tmp_path / "run"), optimizer="sgd", learning_rate=1e12,
                    **{**TINY, "probe_every": 0, "total_steps": 200})
    summary = dqn.train(args)
    assert summary["status"] == "diverged" and summary["steps"] < 200
    assert json.load(open(tmp_path / "run" / "summary.json"))["status"] == "diverged"


@pytest.mark.parametrize("intervention", [dict(reset_last_layer=True), dict(shrink_perturb=True),
                                          dict(reset_optimizer=True), dict(redo=True, arch="cnn", width=32)])
def test_each_intervention_runs_and_logs_the_statistics(tmp_path, data_dir, intervention):
    run_dir = tmp_path / "run"
    args = dqn.Args(data_dir=data_dir, run_dir=str(run_dir), hessian_batch_size=16, hessian_iters=5,
                    **{**TINY, "num_images": 100, **intervention})
    summary = dqn.train(args)
    assert summary["status"] == "completed"
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    probe_rows = [r for r in rows if "probe/plasticity" in r]
    keys = {"stats/weight_norm", "stats/weight_rank", "stats/feature_rank", "stats/feature_effective_rank",
            "stats/feature_sparsity", "stats/dead_units", "stats/dormant_units", "stats/distance_from_init",
            "stats/grad_norm", "curvature/hessian_top"}
    assert all(keys <= set(r) for r in probe_rows) and len(probe_rows) == 3
    assert probe_rows[0]["stats/distance_from_init"] == 0 < probe_rows[-1]["stats/distance_from_init"]
    assert [p["step"] for p in summary["probes"]] == [0, 20, 40]
    assert summary["probes"] == probe_rows  # the trajectories, without TensorBoard
    assert keys | {"probe/plasticity_loss"} <= set(summary["metrics"])
    assert summary["metrics"]["stats/weight_norm"] == probe_rows[-1]["stats/weight_norm"]


@pytest.mark.parametrize("intervention,changed", [(dict(reset_last_layer=True), {"head.weight", "head.bias"}),
                                                   (dict(shrink_perturb=True, shrink=0.5, perturb=0.2), "all")])
def test_interventions_change_the_agent_at_each_period_and_only_then(tmp_path, data_dir, intervention, changed):
    """SGD with a learning rate far below float32's resolution leaves the weights as they are, so only the
    interventions move them: at steps 15 and 30 (the period) and at no other step. The weights are read from the
    checkpoints of a run extended one segment at a time."""
    run_dir = tmp_path / "run"
    common = dict(data_dir=data_dir, run_dir=str(run_dir), optimizer="sgd", learning_rate=1e-30,
                  intervention_period=15, stats=False, hessian=False, **{**TINY, "probe_every": 0, "num_images": 100},
                  **intervention)
    weights = {}
    for steps in (14, 15, 16, 29, 30):
        summary = dqn.train(dqn.Args(**{**common, "total_steps": steps}, resume=steps > 14))
        assert summary["status"] == "completed"
        weights[steps] = torch.load(run_dir / "checkpoint.pt", weights_only=False)["q_network"]
    names = set(weights[14]) if changed == "all" else changed
    for before, after in ((14, 15), (15, 16), (16, 29), (29, 30)):
        moved = {name for name in weights[14] if not torch.equal(weights[before][name], weights[after][name])}
        assert moved == (names if after in (15, 30) else set()), (before, after)
    assert not any(k.startswith(("stats/", "curvature/")) for k in summary["metrics"])


@pytest.mark.parametrize("intervention", [dict(reset_last_layer=True), dict(shrink_perturb=True),
                                          dict(redo=True)])
def test_a_probe_measures_the_network_before_the_intervention_of_its_step(tmp_path, data_dir, intervention):
    """A probe and an intervention both at step 20: the probe sees the network as trained, the same as a run
    without the intervention, and the intervention still changes the weights right after it."""
    common = dict(data_dir=data_dir, intervention_period=20, hessian=False, redo_tau=0.5, **{**TINY, "total_steps": 20,
                                                                               "probe_every": 20, "num_images": 100})
    runs = {name: dqn.train(dqn.Args(run_dir=str(tmp_path / name), **common, **extra))
            for name, extra in (("plain", {}), ("intervened", intervention))}
    probes = [summary["probes"][-1] for summary in runs.values()]
    assert probes[0]["step"] == probes[1]["step"] == 20
    assert probes[0] == probes[1]
    weights = [torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["q_network"] for name in runs]
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_shrink_perturb_starts_a_fresh_optimizer_and_redo_scores_256_transitions(tmp_path, data_dir, monkeypatch):
    """Ash & Adams' code builds a fresh optimizer after each shrink & perturb; dopamine's ReDo scores dormancy on
    batch_size_statistics = 256 transitions. The checkpoint at the intervention's step holds no Adam moments."""
    batches, real_redo = [], dqn.redo
    monkeypatch.setattr(dqn, "redo", lambda net, opt, inputs, tau: (batches.append(len(inputs)),
                                                                    real_redo(net, opt, inputs, tau))[1])
    common = dict(data_dir=data_dir, intervention_period=15, stats=False, hessian=False,
                  **{**TINY, "total_steps": 15, "probe_every": 0, "num_images": 100})
    for name, extra in (("adam", {}), ("shrink_perturb", dict(shrink_perturb=True)), ("redo", dict(redo=True))):
        dqn.train(dqn.Args(run_dir=str(tmp_path / name), **common, **extra))
    states = {name: torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["optimizer"]["state"]
              for name in ("adam", "shrink_perturb")}
    assert len(states["adam"]) == 6 and states["shrink_perturb"] == {}  # three layers, weight and bias
    assert batches == [256] and dqn.Args().shrink == 0.4 and dqn.Args().perturb == 0.1


@pytest.mark.parametrize("reset_target_head", [False, True])
def test_reset_target_head_gives_the_target_the_fresh_head(tmp_path, data_dir, reset_target_head):
    """At a reset between target updates, the target keeps the pre-reset head unless --reset-target-head; its
    torso is the last target update's either way. A two-hot agent logs its head's softmax entropy."""
    run_dir = tmp_path / "run"
    dqn.train(dqn.Args(data_dir=data_dir, run_dir=str(run_dir), reset_last_layer=True, intervention_period=15,
                       reset_target_head=reset_target_head, two_hot=True, stats=False, hessian=False,
                       **{**TINY, "total_steps": 15, "target_period": 20, "probe_every": 0, "num_images": 100}))
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    q, target = checkpoint["q_network"], checkpoint["target_network"]
    assert torch.equal(q["head.weight"], target["head.weight"]) == reset_target_head
    torso = next(name for name in q if not name.startswith("head."))
    assert not torch.equal(q[torso], target[torso])  # the target is the initial network
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    entropy = [r["charts/two_hot_entropy"] for r in rows if "charts/two_hot_entropy" in r]
    assert len(entropy) == 1 and 0 < entropy[0] < math.log(101)
