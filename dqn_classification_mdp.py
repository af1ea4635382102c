"""DQN on the classification MDPs of Sec 3.2, with the plasticity probe of Sec 2.2 every few thousand steps.

Sec 3.2, 5.1 and A.2. Run: ``python dqn_classification_mdp.py --dataset mnist --variant true_label --arch mlp``.
Everything lives on the device: images are a uint8 tensor, the env steps all copies at once, and the replay stores
image indices. One iteration steps the ``num_envs`` envs once and takes one optimizer step. ``train`` reads as one
agent's procedure; the seeds of ``--num-seeds`` are a leading tensor axis that ``common/runtime/seeds.py`` handles.
"""
if __name__ == "__main__":  # a signal while the libraries below import ends the process with 75, as one later does
    from common.runtime import early_signals

    early_signals.install()

import functools
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from common.errors import UsageError, check
from common.runtime.cli import main, select_device
from common.runtime.logger import atomic_torch_save, pyplot
from common.runtime.run import Interrupted
from common.runtime.seeds import OneSeed, RunGroup, StackedEnvs, StackedOptimizer, StackedReplay
from common.science.classification import DATASETS, VARIANTS, ClassificationMDP, load_dataset
from common.science.hessian import hessian_matvec, top_eigenvalue
from common.science.interventions import redo, reset_last_layer, reset_optimizer_state, shrink_perturb
from common.science.networks import ARCHITECTURES, TwoHot, build_network, eval_mode
from common.science.optim import OPTIMIZERS, make_optimizer
from common.science.probe import PROBES, probe_key, run_probes
from common.science.stats import plasticity_statistics


LOG_KEYS = ("losses/td_loss", "losses/q_values", "charts/accuracy", "charts/reward_rate")


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment: the script's file name (CleanRL)"""
    seed: int = 1
    """seed of the experiment"""
    num_seeds: int = 1
    """train N independent agents, seeds seed .. seed+N-1, in lockstep in one process (stacked parameters, vmap);
    each is its single run's equal and writes its own run directory, <run-dir>__seed<seed> with --run-dir"""
    cuda: bool = True
    """use the GPU when there is one"""
    track: bool = False
    """log to Weights & Biases as well (needs wandb installed)"""
    run_dir: Optional[str] = None
    """the run directory; default runs/<exp_name>__<seed>__<time>"""
    resume: bool = False
    """continue the run in --run-dir from its checkpoint.pt"""
    data_dir: str = os.environ.get("PLASTICITY_DATA_DIR", "data")
    """where the datasets are (torchvision's layout); downloaded there when missing and online"""

    dataset: str = "mnist"
    """observation space: mnist, fashion_mnist or cifar10 (Sec 3.2 uses MNIST and CIFAR-10)"""
    variant: str = "true_label"
    """the MDP of Sec 3.2: true_label, random_label or sparse_reward"""
    num_images: int = 0
    """use the first N training images (0: all); a deviation for quick runs"""

    arch: str = "mlp"
    """architecture of A.2: mlp, cnn, resnet18 or vit"""
    width: int = 512
    """hidden width in MLP units (A.2: 512; 16 x {1, 2, 4, 8, 12, 16} in Fig 5); the CNN scales its 64 channels and
    256 dense units by width / 512; ResNet-18 and the ViT ignore it"""
    layer_norm: bool = False
    """normalise after each hidden layer (Sec 6.2)"""
    spectral_norm: bool = False
    """spectral normalisation of the first layer (Sec 6.2, Gogianu et al. 2021)"""
    two_hot: bool = False
    """two-hot categorical value head with cross-entropy loss (Sec 6.2)"""
    num_bins: int = 101
    """two-hot support size (not given in the paper)"""
    v_min: float = -5.0
    """two-hot support minimum (not given; covers Q-values and probe targets at gamma 0.9)"""
    v_max: float = 15.0
    """two-hot support maximum (not given; Q-values lie in [0, 1 / (1 - gamma)] = [0, 10])"""

    optimizer: str = "adam"
    """adam, rmsprop (DQN Zoo semantics) or sgd; the probe uses the same with fresh state (Sec 3.1)"""
    learning_rate: float = 1e-3
    """A.2 gives none; A.1's Adam learning rate, for every optimizer (DQN Zoo's RMSProp uses 2.5e-4)"""
    adam_b1: float = 0.9
    """Adam first-moment decay (A.1)"""
    adam_b2: float = 0.999
    """Adam second-moment decay (A.1)"""
    adam_eps: float = 1e-8
    """Adam epsilon outside the square root (optax default; A.2 gives none)"""
    adam_eps_root: float = 0.0
    """Adam epsilon inside the square root (eq. 6)"""
    rmsprop_decay: float = 0.95
    """RMSProp decay of its gradient statistics (DQN Zoo)"""
    rmsprop_eps: float = 0.01 / 32**2
    """RMSProp epsilon inside the square root (DQN Zoo's optimizer_epsilon 0.01 / 32**2)"""
    rmsprop_centered: bool = True
    """centered RMSProp: divide by the gradient's variance rather than its second moment (DQN Zoo)"""
    weight_decay: float = 0.0
    """L2 penalty: weight_decay * w added to the gradient, for every optimizer (Sec 6.2's intervention: 1e-5)"""

    total_steps: int = 100_000
    """optimizer steps (the paper's runs: 100k here; 100 x 1,000 in Sec 6.2)"""
    num_envs: int = 1
    """environment copies stepped per iteration (each iteration is one optimizer step; not given: CleanRL's 1)"""
    buffer_size: int = 100_000
    """replay capacity in transitions (A.2 gives none; A.3's 100,000)"""
    learning_starts: int = 1_000
    """iterations of uniformly random actions that fill the replay before learning (not given)"""
    batch_size: int = 32
    """replay minibatch size (DQN Zoo's 32; not given in A.2)"""
    gamma: float = 0.9
    """discount (not given; 0.9 keeps Q-values in [0, 10])"""
    epsilon: float = 0.1
    """epsilon of the epsilon-greedy policy (A.3's 0.1; A.2 gives none)"""
    double_q: bool = True
    """Double DQN targets: A.2 uses the same agent as the Atari experiments (A.3)"""
    target_period: int = 1_000
    """optimizer steps between target-network updates (Sec 5.1: 1,000; A.2 mentions 10,000)"""

    probe_every: int = 5_000
    """optimizer steps between plasticity probes (Sec 5.1, A.2); 0 disables probes"""
    probe_steps: int = 2_000
    """optimizer steps of each probe fit (Sec 3.1: 2,000)"""
    probe_targets: int = 10
    """random target functions per probe (A.2: 10)"""
    probe_inputs: int = 2_048
    """inputs X drawn from the replay for the probe (not given)"""
    probe_batch_size: int = 32
    """minibatch size of the probe fits (not given; the agent's)"""
    ref_probe: bool = True
    """also run the reference probe at every probe: the same kind of targets (eq. 4) and steps, but one fixed
    instrument for every arm and every probe: Adam (A.1's moments, no weight decay) at --ref-probe-learning-rate,
    fitting the predicted values by squared error whatever the head, on --ref-probe-inputs distinct training
    images with targets and minibatches that are the same at every probe of a run (drawn from its seed alone);
    logged as probe_ref/... (not in the paper: it compares arms with different optimizers or heads, and the
    paper's probe draws with replacement from a replay that grows, so its task changes between probes)"""
    ref_probe_learning_rate: float = 1e-3
    """the reference probe's Adam learning rate (A.1's)"""
    ref_probe_inputs: int = 1_024
    """the reference probe's distinct inputs, drawn uniformly from the training images, as the true- and
    random-label MDPs' replay holds them: enough that a fresh width-64 MLP or CNN fits about 0.6-0.85 of b, clear
    of the ceiling (benchmarks/probe_fit.py --reference; not in the paper)"""
    probe_seed_batch: int = 0
    """with --num-seeds: seeds whose probes run in one lockstep (0: all); each adds --probe-targets copies of the
    network with gradients and optimizer moments: lower it when those do not fit in memory, or when a smaller
    lockstep runs faster on your machine (benchmarks/bench_seeds.py measures it; results in benchmarks/RESULTS.md)"""
    stats: bool = True
    """log the statistics of Sec 5.2 (common/science/stats.py) on the probe inputs at every probe"""
    hessian: bool = True
    """log the top Hessian eigenvalue of the TD loss at every probe (Fig 14, curvature/hessian_top)"""
    hessian_batch_size: int = 512
    """transitions in the batch drawn at each probe for the Hessian and the TD gradient norm (A.1's 512)"""
    hessian_iters: int = 20
    """Lanczos iterations for the top eigenvalue (not given; the extreme Ritz value converges first)"""

    intervention_period: int = 0
    """optimizer steps between interventions (0: --target-period; Sec 6.2 applies them at each target update)"""
    reset_last_layer: bool = False
    """re-initialise the last layer and its optimizer state (Sec 6.2, simplified from Nikishin et al. 2022)"""
    reset_target_head: bool = False
    """with --reset-last-layer, give the target network the online network's fresh head too (Sec 6.2 does not say
    whether the target was reset; by default it keeps the pre-reset head until the next target update)"""
    shrink_perturb: bool = False
    """theta <- shrink * theta + perturb * theta_fresh, then a fresh optimizer (Sec 6.2, Ash & Adams 2020)"""
    shrink: float = 0.4
    """shrink & perturb's shrink factor: Sec 6.2 says only "a small scalar"; 0.4 is the default of Ash & Adams'
    released code (JordanAsh/warm_starting, run.py), which also builds a fresh optimizer after each application"""
    perturb: float = 0.1
    """shrink & perturb's coefficient of the fresh initialisation (JordanAsh/warm_starting run.py's default; the
    paper gives none)"""
    reset_optimizer: bool = False
    """reset the optimizer's state (B.1: "resetting only the optimizer state")"""
    redo: bool = False
    """recycle dormant units, mlp and cnn only (ReDo, Sokar et al. 2023; not in the paper)"""
    redo_tau: float = 0.1
    """ReDo's dormancy threshold (Sokar et al. 2023 use 0.1); also the threshold of stats/dormant_units"""
    redo_batch_size: int = 256
    """replay transitions whose activations score ReDo's dormancy (dopamine labs/redo's batch_size_statistics)"""

    log_every: int = 1_000
    """optimizer steps between metric logs (each log is the only host sync)"""
    checkpoint_every: int = 0
    """optimizer steps between checkpoints (0: after every probe); SIGTERM/SIGUSR1 also checkpoint and stop"""


def validate(args):
    check(args.dataset in DATASETS, f"unknown --dataset {args.dataset!r}: choose one of {', '.join(DATASETS)}")
    check(args.variant in VARIANTS, f"unknown --variant {args.variant!r}: choose one of {', '.join(VARIANTS)}")
    check(args.arch in ARCHITECTURES, f"unknown --arch {args.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    check(args.optimizer in OPTIMIZERS, f"unknown --optimizer {args.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    for name in ("num_seeds", "total_steps", "num_envs", "buffer_size", "batch_size", "target_period", "log_every",
                 "width", "probe_steps", "probe_targets", "probe_inputs", "probe_batch_size", "learning_rate",
                 "ref_probe_learning_rate", "ref_probe_inputs",
                 "hessian_batch_size", "hessian_iters", "redo_batch_size"):
        check(getattr(args, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("probe_every", "probe_seed_batch", "checkpoint_every", "num_images", "learning_starts", "epsilon",
                 "weight_decay", "adam_eps", "adam_eps_root", "rmsprop_eps", "intervention_period", "shrink", "perturb",
                 "redo_tau"):
        check(getattr(args, name) >= 0, f"--{name.replace('_', '-')} must be non-negative, got {getattr(args, name)}")
    check(args.learning_starts * args.num_envs >= args.batch_size,
          "--learning-starts x --num-envs must fill the replay with at least --batch-size transitions")
    check(args.seed >= 0, f"--seed must be non-negative, got {args.seed}")
    check(0 <= args.gamma < 1, f"--gamma must be in [0, 1), got {args.gamma}")
    check(0 <= args.rmsprop_decay < 1, f"--rmsprop-decay must be in [0, 1), got {args.rmsprop_decay}")
    check(args.epsilon <= 1, f"--epsilon must be in [0, 1], got {args.epsilon}")
    check(args.probe_every <= args.total_steps, f"--probe-every ({args.probe_every}) exceeds --total-steps "
          f"({args.total_steps}): no probe would follow step 0; use a smaller value, or 0 for no probes")
    check(not args.two_hot or (args.v_min < args.v_max and args.num_bins >= 2),
          f"two-hot support needs --v-min < --v-max and --num-bins >= 2, got {args.v_min}, {args.v_max}, "
          f"{args.num_bins}")
    check(not args.redo or args.arch in ("mlp", "cnn"), "--redo supports --arch mlp and cnn only")
    check(args.hessian_iters <= 1_000, f"--hessian-iters must be at most 1,000 (20 suffice for the top eigenvalue), "
          f"got {args.hessian_iters}")


def build_q_network(args, obs_shape):
    two_hot = TwoHot(args.v_min, args.v_max, args.num_bins) if args.two_hot else None
    return build_network(args.arch, obs_shape, 10, width=args.width, layer_norm=args.layer_norm,
                         spectral_norm=args.spectral_norm, two_hot=two_hot)


def build_optimizer(args, params):
    """The agent's optimizer with its own hyperparameters; the probe builds its copies with this too."""
    hyperparameters = {
        "adam": dict(betas=(args.adam_b1, args.adam_b2), eps=args.adam_eps, eps_root=args.adam_eps_root),
        "rmsprop": dict(decay=args.rmsprop_decay, eps=args.rmsprop_eps, centered=args.rmsprop_centered),
        "sgd": {},
    }[args.optimizer]
    return make_optimizer(args.optimizer, params, args.learning_rate, weight_decay=args.weight_decay,
                          **hyperparameters)


def reference_probe_optimizer(args):
    """``make_optimizer(params)`` of the reference probe: Adam with A.1's moments at --ref-probe-learning-rate, the
    same for every arm whatever the agent's optimizer, rate or weight decay."""
    return lambda params: make_optimizer("adam", params, args.ref_probe_learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                         eps_root=0.0)


def load_images(args, device):
    images, labels = load_dataset(args.dataset, args.data_dir, train=True, device=device)
    if args.num_images:
        images, labels = images[:args.num_images], labels[:args.num_images]
    return images, labels


def make_agent(args, images, labels, seed):
    """One seed's environment, Q-network and target network, built as its single run builds them."""
    try:
        env = ClassificationMDP(images, labels, args.variant, args.num_envs, seed=seed)
    except ValueError as e:
        raise UsageError(f"{e}; use more --num-images") from None
    obs_shape = tuple(images.shape[1:])
    q_network = build_q_network(args, obs_shape).to(images.device)
    target_network = build_q_network(args, obs_shape).to(images.device)
    target_network.load_state_dict(q_network.state_dict())
    return env, q_network, target_network


def td_loss(q_network, target_network, images, batch, gamma, double_q, train=True):
    """Eq. 1: the squared TD error of the taken actions (two-hot: cross-entropy to the encoded target), averaged
    over the minibatch, and the mean predicted value. Bootstrap targets ``r + gamma Q_target(s', a*)``, ``a*`` the
    online network's argmax with Double-Q, come from eval-mode forwards; the online forward that is trained runs in
    train mode (``train=False``: eval mode, for the probe's statistics and Hessian). Seeds are the leading axis of
    ``batch`` (``common.runtime.seeds``): the results are ``(N,)``."""
    obs, actions, rewards, next_obs = batch
    network = q_network.template  # values and loss need no parameters
    with torch.no_grad():
        next_values = network.values(target_network.call(images[next_obs], train=False))
        online = network.values(q_network.call(images[next_obs], train=False)) if double_q else next_values
        targets = rewards + gamma * next_values.gather(-1, online.argmax(-1, keepdim=True)).squeeze(-1)
    out = q_network.call(images[obs], train=train)
    seeds, rows = torch.arange(len(obs), device=obs.device)[:, None], torch.arange(obs.shape[1], device=obs.device)
    taken = out[seeds, rows, actions]
    return network.loss(taken, targets).mean(1), network.values(out).detach().flatten(1).mean(1)


@torch.no_grad()
def two_hot_entropy(q_network, images, obs):
    """``(N,)`` mean entropy (nats) of the two-hot head's softmax over bins, over every action of the observation
    indices ``obs`` (N, B), in eval mode: log(num_bins) is a uniform head, 0 a one-hot one."""
    logits = q_network.call(images[obs], train=False)
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).flatten(1).mean(1)


@torch.no_grad()
def act(q_network, images, obs, epsilon, rng):
    """Epsilon-greedy actions for the observation indices ``obs`` (greedy in eval mode); no host sync."""
    greedy = q_network.template.values(q_network.call(images[obs], train=False)).argmax(-1)
    random_actions = rng.randint_like(obs, 10)
    explore = rng.rand_like(obs) < epsilon
    return torch.where(explore, random_actions, greedy)


def network_statistics(args, q_network, target_network, images, inputs, batch, initial_parameters):
    """The statistics of Sec 5.2 on the probe ``inputs``, the TD gradient norm and, with --hessian, the top
    eigenvalue of the TD loss's Hessian on ``batch`` (Fig 14); all in eval mode (no dropout, BatchNorm on its
    running statistics, which stay untouched). ``q_network`` and ``target_network`` are plain modules."""
    def loss_fn():
        return td_loss(OneSeed(q_network), OneSeed(target_network), images, tuple(b[None] for b in batch),
                       args.gamma, args.double_q, train=False)[0][0]

    metrics = {}
    if args.stats:
        metrics = plasticity_statistics(q_network, inputs, tau=args.redo_tau, initial_parameters=initial_parameters,
                                        loss_fn=loss_fn)
    if args.hessian:
        with eval_mode(q_network):
            matvec, dim = hessian_matvec(loss_fn, list(q_network.parameters()))
            metrics["curvature/hessian_top"] = top_eigenvalue(matvec, dim, args.hessian_iters)
    return metrics


def probe_plasticity(args, q_network, target_network, images, replay, initial_parameters, seeds, step):
    """Sec 3.1 for the ``seeds`` (``common.runtime.seeds.Seed``) due at ``step``, all their fits in one lockstep
    (``run_probes``): fit fresh random targets from a copy of each seed's current parameters. Before that, each
    seed's statistics of Sec 5.2 on the same inputs and the TD Hessian's top eigenvalue (``network_statistics``).
    Returns per seed ``(metrics, mean learning curve)``. Each seed's probe draws only from its own generators (its
    inputs, minibatches and the fits' dropout), seeded from its run seed and ``step``, so the agents are untouched:
    their weights after N steps are bit-identical whatever the probe settings."""
    obs_shape, inputs, ref_inputs, metrics, fit_seeds, ref_seeds = tuple(images.shape[1:]), [], [], [], [], []
    for seed in seeds:
        k, replay_k = seed.index, replay.view(seed.index)
        # The middle word is unused; the inputs and minibatches are drawn from the first.
        inputs_seed, _, fit_seed = np.random.SeedSequence([seed.seed, step]).generate_state(3).tolist()
        generator = torch.Generator(images.device).manual_seed(inputs_seed)
        pick = torch.randint(replay_k.size, (args.probe_inputs,), generator=generator, device=images.device)
        inputs.append(images[replay_k.obs[pick]])
        # The reference probe's inputs, targets and minibatches: the run seed's alone, the same at every probe, from
        # a stream of its own (spawn key 2; 1 is the dropout's, common.runtime.seeds).
        ref_inputs_seed, ref_seed = np.random.SeedSequence(seed.seed, spawn_key=(2,)).generate_state(2).tolist()
        ref_generator = torch.Generator(images.device).manual_seed(ref_inputs_seed)
        pick = torch.randperm(len(images), generator=ref_generator, device=images.device)[:args.ref_probe_inputs]
        ref_inputs.append(images[pick])
        ref_seeds.append(ref_seed)
        metrics.append({})
        if args.stats or args.hessian:
            batch = replay_k.sample(args.hessian_batch_size, generator)
            metrics[-1] = network_statistics(args, q_network.modules[k], target_network.modules[k], images,
                                             inputs[-1], batch, [p[k] for p in initial_parameters.values()])
        fit_seeds.append(fit_seed)
    networks, make_network = [q_network.modules[seed.index] for seed in seeds], lambda: build_q_network(args, obs_shape)
    fit = dict(num_targets=args.probe_targets, steps=args.probe_steps, batch_size=args.probe_batch_size)
    probes = {"paper": run_probes(networks, make_network, torch.stack(inputs),
                                  lambda params: build_optimizer(args, params), seeds=fit_seeds, **fit)}
    if args.ref_probe:
        probes["reference"] = run_probes(networks, make_network, torch.stack(ref_inputs),
                                         reference_probe_optimizer(args), seeds=ref_seeds, value_loss=True, **fit)
    rows = []
    for n, (seed, stats) in enumerate(zip(seeds, metrics)):
        row = {}
        for probe, results in probes.items():
            result, key = results[n], functools.partial(probe_key, probe)
            plasticity = result.plasticity.double()
            initial = seed.probes[0][key("plasticity")] if seed.probes else plasticity
            row.update({key("final_loss"): result.final_losses.mean(), key("baseline"): result.baseline,
                        key("plasticity"): plasticity, key("plasticity_loss"): initial - plasticity,
                        key("fit"): plasticity / result.baseline})
        rows.append(({**row, **stats}, probes["paper"][n].curves.mean(0)))
    return rows


def intervene(args, q_network, target_network, optimizer, replay, images, rng, global_rngs):
    """Apply the chosen interventions of Sec 6.2 / B.1 and ReDo, in place: each seed's re-initialisations from its
    own global-RNG stream, its ReDo batch from its own generator. Optimizer state is reset for all seeds at once
    (they intervene at the same steps), which for each seed is what its single run does: shrink & perturb starts
    a fresh optimizer, as Ash & Adams' code does. With --reset-target-head the target takes the fresh head."""
    obs_shape, device = tuple(images.shape[1:]), images.device
    redo_inputs = images[replay.sample(args.redo_batch_size, rng)[0]] if args.redo else [None] * len(q_network)
    for network, network_optimizer, inputs in global_rngs.each(q_network.modules, optimizer.views(), redo_inputs):
        if args.reset_last_layer:
            reset_last_layer(network)
        if args.shrink_perturb:
            shrink_perturb(network, build_q_network(args, obs_shape).to(device), args.shrink, args.perturb)
        if args.redo:
            redo(network, network_optimizer, inputs, args.redo_tau)
    if args.reset_last_layer:  # the head's moments belong to the old weights
        reset_optimizer_state(optimizer, [q_network.params["head.weight"], q_network.params["head.bias"]])
        if args.reset_target_head:
            with torch.no_grad():
                for name in ("head.weight", "head.bias"):
                    target_network.params[name].copy_(q_network.params[name])
    if args.reset_optimizer or args.shrink_perturb:
        reset_optimizer_state(optimizer)


def draw_probe_curves(probe_history, title):
    """Fig 4: probe learning curves (mean over targets) from successive checkpoints, and P over training;
    ``probe_history`` is ``[(step, curve, plasticity)]``."""
    plt = pyplot()

    fig, (ax_curves, ax_p) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.cm.viridis(np.linspace(0, 1, len(probe_history)))
    for (step, curve, _), colour in zip(probe_history, colours):
        ax_curves.plot(curve, color=colour, lw=1, label=f"step {step:,}")
    ax_curves.set(yscale="log", xlabel="probe optimizer step", ylabel="probe loss (mean over targets)",
                  title="Probe learning curves by checkpoint")
    if len(probe_history) <= 12:
        ax_curves.legend(fontsize=7)
    steps, plasticity = [h[0] for h in probe_history], [h[2] for h in probe_history]
    ax_p.plot(steps, plasticity, marker="o")
    ax_p.set(xlabel="agent optimizer step", ylabel="plasticity P = b - final loss", title="Plasticity (eq. 5)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_probe_curves(args, seed):
    """Fig 4 and the curves behind it (probe_curves.pt) in the seed's run directory, where it probed."""
    if not seed.probes:
        return
    run, steps = seed.run, [step for step, _ in seed.curves]
    history = [(step, curve, row["probe/plasticity"]) for (step, curve), row in zip(seed.curves, seed.probes)]
    run.save_figure(lambda: draw_probe_curves(history, f"{args.arch} on {args.dataset} {args.variant} "
                                                       f"(seed {seed.seed})"), "fig4_probe_curves.png")
    atomic_torch_save({"steps": steps, "curves": torch.stack([curve for _, curve in seed.curves]),
                       "plasticity": [row["probe/plasticity"] for row in seed.probes]},
                      os.path.join(run.run_dir, "probe_curves.pt"))


def probe_fits(seed):
    """``probe/initial_fit`` = P(theta_0) / b(theta_0) and ``probe/final_fit`` = P(theta_T) / b(theta_T): the
    fraction of the targets' variance the first and the last probe's fits explain; the same as
    ``probe_ref/initial_fit`` and ``probe_ref/final_fit`` for the reference probe
    (``common.science.probe.probe_key``). A plasticity loss means something only where a fresh network fits the
    probe (a high initial fit)."""
    if not seed.probes:
        return {}
    fits = {}
    for probe in PROBES:
        if probe_key(probe, "fit") in seed.probes[0]:
            fits[probe_key(probe, "initial_fit")] = seed.probes[0][probe_key(probe, "fit")]
            fits[probe_key(probe, "final_fit")] = seed.probes[-1].get(probe_key(probe, "fit"))
    return fits


def train(args):
    """Train the agent of Sec 3.2 (seeds seed .. seed + num_seeds - 1 in lockstep, each exactly its single run:
    ``common.runtime.seeds``). Returns the run's summary; with several seeds ``{"status", "runs"}``, the worst status."""
    validate(args)
    runs = RunGroup(args, total="total_steps", env_steps_per_step=args.num_envs, probe_seed_batch=args.probe_seed_batch)
    if runs.finished:
        return runs.summary()
    with runs.setting_up():
        device = select_device(args.cuda)
        images, labels = load_images(args, device)
        envs, q_network, target_network = runs.build(lambda seed: make_agent(args, images, labels, seed), device)
        env = StackedEnvs(envs)
        initial_parameters = {name: p.detach().clone() for name, p in q_network.params.items()}  # distance_from_init
        optimizer = StackedOptimizer(build_optimizer(args, q_network.parameters()), q_network)  # elementwise
        replay = StackedReplay(len(runs), args.buffer_size, device)
        rng = runs.generators(device)  # actions and minibatches
        q_network.dropout_generators = runs.dropout_generators(device)  # the ViT's dropout masks
        window = torch.zeros(len(runs), 4, device=device)  # the log window's sums of loss, Q, accuracy, reward
        state = dict(q_network=q_network, target_network=target_network, optimizer=optimizer, replay=replay, env=env,
                     generator=rng, dropout_generator=q_network.dropout_generators, log_window=window,
                     initial_parameters=initial_parameters)
        step = runs.resume(state, device)
    if step is None:  # a fresh run: fill the replay with uniformly random actions
        step, obs = 0, env.reset()
        for _ in range(args.learning_starts):
            actions = rng.randint_like(obs, 10)
            next_obs, rewards = env.step(actions)
            replay.add(obs, actions, rewards, next_obs)
            obs = next_obs
    else:
        obs = env.obs  # the checkpoint's
    classes = env.stack("labels")  # random_label: each seed its own relabelling
    probe = functools.partial(probe_plasticity, args, q_network, target_network, images, replay, initial_parameters)
    runs.start(step)
    print(f"device {device}, {len(runs)} seed(s), {sum(p[0].numel() for p in q_network.parameters()):,} parameters")
    intervention_period = args.intervention_period or args.target_period
    try:
        if args.probe_every and step % args.probe_every == 0 and runs.probe(step, probe):  # step 0, or abandoned
            if 0 < step and step % intervention_period == 0 and not runs.probe_pending:
                # it waited for the probe
                intervene(args, q_network, target_network, optimizer, replay, images, rng, runs.global_rngs)
        while step < args.total_steps and not runs.stopping:
            actions = act(q_network, images, obs, args.epsilon, rng)
            next_obs, rewards = env.step(actions)
            accuracy = (actions == classes.gather(-1, obs)).float().mean(-1)  # the state that emitted obs is its class
            replay.add(obs, actions, rewards, next_obs)
            obs = next_obs

            batch = replay.sample(args.batch_size, rng)
            loss, q_values = td_loss(q_network, target_network, images, batch, args.gamma, args.double_q)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # the seeds share nothing, so each gets exactly its own gradient
            optimizer.step()
            step += 1
            window += torch.stack([loss.detach(), q_values, accuracy, rewards.mean(-1)], dim=-1)

            if step % args.target_period == 0:
                target_network.copy_from(q_network)
            if step % args.log_every == 0:
                logged = dict(zip(LOG_KEYS, (window / args.log_every).unbind(-1)))
                if args.two_hot:  # is the head collapsing onto few bins, or spreading over the support?
                    logged["charts/two_hot_entropy"] = two_hot_entropy(q_network, images, batch[0])
                runs.log(step, logged)
                window.zero_()
            if args.probe_every and step % args.probe_every == 0:
                runs.probe(step, probe)  # the network as trained: before the intervention of the same step
            # A probe that a signal skips or abandons is redone on resume, and the intervention then follows it.
            if step % intervention_period == 0 and not runs.probe_pending:  # after the copy: targets keep theta
                intervene(args, q_network, target_network, optimizer, replay, images, rng, runs.global_rngs)
            if step % (args.checkpoint_every or args.probe_every or args.total_steps) == 0:
                runs.save_checkpoint(step, state)
    except Interrupted:
        pass  # the probe under way at `step` is abandoned: the checkpoint below leaves it due
    return runs.finish(step, state, save_outputs=lambda seed: save_probe_curves(args, seed), final_metrics=probe_fits)


if __name__ == "__main__":
    main(train, Args)
