"""--num-seeds N trains N agents in lockstep that equal N single runs, and common/runtime/seeds.py's pieces."""
import copy
import json
import os
import signal

import pytest
import torch
from torch import nn

import dqn_classification_mdp as dqn
from common.analysis import sweep
from common.runtime.seeds import SeedStack, load_optimizer_states, optimizer_state
from common.science.optim import Adam

TINY = dict(total_steps=20, learning_starts=20, buffer_size=500, batch_size=8, width=16, log_every=5,
            target_period=5, probe_every=10, probe_steps=4, probe_targets=2, probe_inputs=16, probe_batch_size=8,
            num_images=200, cuda=False, hessian_batch_size=16, hessian_iters=3, seed=3)
INTERVENTIONS = dict(reset_last_layer=True, shrink_perturb=True, perturb=0.1)
SEEDS = (3, 4, 5)


def _rows(run_dir):
    """metrics.jsonl without the wall-clock speed, which differs between any two runs."""
    return [{k: v for k, v in json.loads(line).items() if k != "charts/SPS"}
            for line in open(os.path.join(run_dir, "metrics.jsonl"))]


def _assert_same_run(multi_dir, single_dir):
    """Checkpoints (weights, target, optimizer moments, replay), metrics and probes of the two runs are equal to
    float64 rounding (1e-12 relative)."""
    def same(x, y, what):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14, msg=str(what))

    a, b = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=False) for d in (multi_dir, single_dir))
    assert a["step"] == b["step"]
    for name in ("q_network", "target_network", "replay"):
        for key, value in a[name].items():
            same(value, b[name][key], (name, key))
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            same(value, b["optimizer"]["state"][index][key], ("optimizer", index, key))
    same(_rows(multi_dir), _rows(single_dir), "metrics")  # losses, accuracy, probes, statistics, Hessian
    summaries = [json.load(open(os.path.join(d, "summary.json"))) for d in (multi_dir, single_dir)]
    assert summaries[0]["status"] == summaries[1]["status"] == "completed"
    same(summaries[0]["probes"], summaries[1]["probes"], "probes")
    args = [json.load(open(os.path.join(d, "args.json"))) for d in (multi_dir, single_dir)]
    ignore = {"run_dir": None, "resume": None}
    assert {**args[0], **ignore} == {**args[1], **ignore}  # each seed's directory is its single run's


def _train_and_compare(tmp_path, **kwargs):
    combined = dqn.train(dqn.Args(run_dir=str(tmp_path / "multi"), num_seeds=len(SEEDS), **kwargs))
    summaries = combined["runs"]
    assert combined["status"] == "completed"
    assert [s["run_dir"] for s in summaries] == [str(tmp_path / f"multi__seed{seed}") for seed in SEEDS]
    for seed in SEEDS:
        dqn.train(dqn.Args(run_dir=str(tmp_path / f"single{seed}"), **{**kwargs, "seed": seed}))
        _assert_same_run(tmp_path / f"multi__seed{seed}", tmp_path / f"single{seed}")


@pytest.fixture(params=[False, True], ids=["plain calls", "vmap"])
def vmapped(request, monkeypatch):
    """Both ways seeds in lockstep call their networks: one plain call per seed (the CPU's) and one vmapped call
    (a GPU's), the latter forced on the CPU."""
    monkeypatch.setattr(SeedStack, "vmap_on_cpu", request.param)
    return request.param


def test_seeds_in_lockstep_on_the_cpu_equal_their_networks_bit_for_bit():
    """On the CPU each seed's forward and gradient are its own network's, to the bit, in float32."""
    torch.manual_seed(0)
    networks = [nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)) for _ in range(3)]
    alone = [copy.deepcopy(n) for n in networks]
    stack = SeedStack(networks)
    x = torch.randn(3, 4, 5)
    out = stack.call(x)
    out.square().sum().backward()
    for k, network in enumerate(alone):
        y = network(x[k])
        y.square().sum().backward()
        assert torch.equal(out[k], y)
        for stacked, own in zip(stack.parameters(), network.parameters()):
            assert torch.equal(stacked.grad[k], own.grad)


@pytest.mark.parametrize("arch,extra", [
    ("mlp", dict(redo=True)),
    ("cnn", dict(redo=True, width=8)),
    ("vit", dict(optimizer="sgd", total_steps=4, probe_every=4, probe_steps=2, batch_size=4, hessian=False,
                 stats=False, target_period=2, log_every=2, num_images=50, probe_inputs=8, probe_batch_size=4)),
])
def test_three_seeds_equal_three_single_runs(tmp_path, data_dir, monkeypatch, vmapped, arch, extra):
    """A single run calls its network plainly; seeds in lockstep call theirs plainly on the CPU, or under vmap on
    a GPU, whose batched products round differently (float32 weights differ by about 1e-9 after 40 steps), so
    these run in float64 and agree to its rounding. Weights, target networks, optimizer moments, replay, every metric (losses, accuracy, probes,
    statistics, Hessian) and args.json are compared, with interventions on. The ViT keeps its dropout (each
    seed's masks from its own generator, in training and in the probes), and trains with SGD: the gradient of its
    attention's key bias is zero up to rounding (softmax ignores a shift shared by all keys), and Adam would scale
    that rounding noise up to full-size steps."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _train_and_compare(tmp_path, data_dir=data_dir, arch=arch, **INTERVENTIONS, **{**TINY, **extra})
    finally:
        torch.set_default_dtype(default)


def test_resnet18_stacked_td_loss_equals_one_seed_at_a_time(vmapped):
    """ResNet-18 (BatchNorm: running statistics live in the stack's buffers) is too slow for whole runs in a test;
    its TD loss, gradients and BatchNorm updates for two stacked seeds equal each seed's alone to float64 rounding.
    (Whole runs are not compared: Adam turns float64 rounding in gradients near zero into different updates.)"""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        args = dqn.Args(arch="resnet18")
        images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)
        batch = (torch.randint(12, (2, 4), generator=g), torch.randint(10, (2, 4), generator=g),
                 torch.rand(2, 4, generator=g), torch.randint(12, (2, 4), generator=g))

        def stacks(seeds):
            networks = []
            for seed in seeds:
                torch.manual_seed(seed)
                networks.append([dqn.build_q_network(args, (1, 28, 28)) for _ in range(2)])
            return SeedStack([n[0] for n in networks]), SeedStack([n[1] for n in networks])

        def loss_and_grads(q, target, rows):
            loss, _ = dqn.td_loss(q, target, images, tuple(b[rows] for b in batch), 0.9, True)
            return loss, torch.autograd.grad(loss.sum(), list(q.params.values()))

        q, target = stacks([0, 1])
        loss, grads = loss_and_grads(q, target, slice(None))
        for k in range(2):
            q1, target1 = stacks([k])
            loss1, grads1 = loss_and_grads(q1, target1, slice(k, k + 1))
            torch.testing.assert_close(loss[k], loss1[0], rtol=1e-12, atol=0)
            for a, b in zip(grads, grads1):
                torch.testing.assert_close(a[k], b[0], rtol=1e-10, atol=1e-13 * b.abs().max().item())
            for name, buffer in q.buffers.items():  # train-mode BatchNorm moved the running statistics
                torch.testing.assert_close(buffer[k], q1.buffers[name][0], rtol=1e-12, atol=1e-15)
        assert not torch.equal(q.buffers["torso.bn1.running_mean"][0], torch.zeros(64))
    finally:
        torch.set_default_dtype(default)


@pytest.mark.parametrize("probe_seed_batch", [0, 1])
def test_sigterm_during_the_seeds_probes_and_resume_equal_single_runs(tmp_path, data_dir, monkeypatch,
                                                                      probe_seed_batch):
    """SIGTERM arrives in the probes at step 10: in the one lockstep of all three seeds' probes, or (one seed at a
    time) in seed 4's, after seed 3's. The run stops (interrupted) and the resumed run redoes the abandoned probes
    only; all three seeds then equal uninterrupted single runs."""
    common = dict(data_dir=data_dir, redo=True, probe_seed_batch=probe_seed_batch, **INTERVENTIONS, **TINY)
    probe = dqn.probe_plasticity
    signalled, sizes = [], []

    def probe_with_a_signal(*args):
        seeds, step = args[-2:]
        sizes.append(len(seeds))
        if 4 in [s.seed for s in seeds] and step == 10 and not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGTERM)  # the shared handler abandons these probes at once
        return probe(*args)

    monkeypatch.setattr(dqn, "probe_plasticity", probe_with_a_signal)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # see test_three_seeds_equal_three_single_runs
    try:
        _interrupt_resume_and_compare(tmp_path, common)
    finally:
        torch.set_default_dtype(default)
    assert set(sizes) == {probe_seed_batch or 3, 1}  # the seeds' probes in lockstep; single runs probe alone


def _interrupt_resume_and_compare(tmp_path, common):
    interrupted = dqn.train(dqn.Args(run_dir=str(tmp_path / "multi"), num_seeds=3, **common))
    assert interrupted["status"] == "interrupted" and [s["steps"] for s in interrupted["runs"]] == [10, 10, 10]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # every run put its handler back
    resumed = dqn.train(dqn.Args(run_dir=str(tmp_path / "multi"), num_seeds=3, resume=True, **common))
    assert resumed["status"] == "completed"
    for seed in SEEDS:
        dqn.train(dqn.Args(run_dir=str(tmp_path / f"single{seed}"), **{**common, "seed": seed}))
        _assert_same_run(tmp_path / f"multi__seed{seed}", tmp_path / f"single{seed}")


def test_seed_modules_view_the_stack_and_optimizer_state_round_trips():
    torch.manual_seed(0)
    networks = [torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)) for _ in range(3)]
    copies = [[p.detach().clone() for p in n.parameters()] for n in networks]
    stack = SeedStack(networks)
    with torch.no_grad():
        networks[1][0].weight.add_(1.0)  # an in-place edit through seed 1's module lands in the stack
    assert torch.equal(stack.params["0.weight"][1], copies[1][0] + 1)
    assert torch.equal(stack.params["0.weight"][0], copies[0][0])
    optimizer = Adam(stack.params.values(), lr=0.1)
    stack.call(torch.randn(3, 5, 3), train=True).square().sum().backward()
    optimizer.step()
    states = [optimizer_state(optimizer, stack, k) for k in range(3)]
    assert states[2]["state"][0]["exp_avg"].shape == (4, 3) and states[2]["state"][0]["step"] == 1
    fresh = Adam(stack.params.values(), lr=0.1)
    load_optimizer_states(fresh, states)
    for p in stack.params.values():
        assert all(torch.equal(fresh.state[p][key], optimizer.state[p][key]) for key in ("exp_avg", "exp_avg_sq"))


def test_a_sweep_packs_a_cells_seeds_into_one_task(tmp_path, data_dir, capsys):
    """--seeds-per-task 2 over seeds 1-3: task 0 trains seeds 1 and 2 in lockstep into their own cell directories
    (then skipped when run again), task 1 seed 3 alone."""
    grid = sweep.Grid("g", {"variant": sweep.values("variant", ["true_label"]),
                            "seed": sweep.values("seed", [1, 2, 3], label=lambda s: f"seed{s}")})
    preset = {**TINY, "data_dir": data_dir, "total_steps": 10, "probe_every": 0}
    toy = sweep.Sweep(make_grid=lambda options: grid, presets={"tiny": preset}, analyze=None, train=dqn.train,
                      args_cls=dqn.Args)
    argv = ["--seeds-per-task", "2", "--runs-dir", str(tmp_path)]
    assert sweep.run(toy, ["--list", *argv]) == 0
    assert capsys.readouterr().out.splitlines() == ["0 true_label__seed1 true_label__seed2", "1 true_label__seed3"]
    assert sweep.run(toy, ["--task-id", "0", *argv]) == 0
    for seed in (1, 2):
        run_dir = tmp_path / "g" / f"true_label__seed{seed}"
        assert json.load(open(run_dir / "summary.json"))["status"] == "completed"
        assert json.load(open(run_dir / "args.json"))["seed"] == seed
    assert not (tmp_path / "g" / "true_label__seed3").exists()
    assert "in lockstep" in capsys.readouterr().out
    assert sweep.run(toy, ["--task-id", "0", *argv]) == 0 and "skipped" in capsys.readouterr().out
    assert sweep.run(toy, ["--task-id", "1", *argv]) == 0
    assert json.load(open(tmp_path / "g" / "true_label__seed3" / "summary.json"))["status"] == "completed"
