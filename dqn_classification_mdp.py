"""DQN on the classification MDPs of Sec 3.2, with the plasticity probe of Sec 2.2 every few thousand steps.

Sec 3.2, 5.1 and A.2. Run: ``python dqn_classification_mdp.py --dataset mnist --variant true_label --arch mlp``.
Everything lives on the device: images are a uint8 tensor, the env steps all copies at once, and the replay stores
image indices. One iteration steps the ``num_envs`` envs once and takes one optimizer step.
"""
import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from common.cli import UsageError, check, main, seed_everything, select_device
from common.data import DATASETS, load_dataset
from common.envs import VARIANTS, ClassificationMDP
from common.hessian import eval_mode, hessian_matvec, top_eigenvalue
from common.interventions import TwoHot, redo, reset_last_layer, reset_optimizer_state, shrink_perturb
from common.networks import ARCHITECTURES, build_network
from common.optim import OPTIMIZERS, make_optimizer
from common.probe import run_probes
from common.plots import draw_probe_curves
from common.run import Interrupted, Run, combined_summary, share_signals
from common.seeds import (SeedStack, StackedReplay, dropout_generator, global_rng, load_optimizer_states,
                          optimizer_state, optimizer_view, per_seed)
from common.stats import plasticity_statistics


@dataclass
class Args:
    exp_name: str = "dqn_classification_mdp"
    """the name of this experiment (CleanRL)"""
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
    """environment copies stepped per iteration (each iteration is one optimizer step)"""
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
    probe_seed_batch: int = 0
    """with --num-seeds: seeds whose probes run in one lockstep (0: all); each adds --probe-targets copies of the
    network with gradients and optimizer moments: lower it when those do not fit in memory (on a 2-core CPU, 16
    seeds at once ran 0.84x of one at a time, 4 at once 1.14x: benchmarks/RESULTS.md)"""
    stats: bool = True
    """log the statistics of Sec 5.2 (common/stats.py) on the probe inputs at every probe"""
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
    shrink_perturb: bool = False
    """theta <- shrink * theta + perturb * theta_fresh (Sec 6.2, Ash & Adams 2020)"""
    shrink: float = 0.3
    """shrink & perturb's shrink factor (Ash & Adams 2020's lambda = 0.3)"""
    perturb: float = 0.01
    """shrink & perturb's coefficient of a fresh initialisation (our choice; the paper gives none): a perturbation
    of standard deviation about 2.5e-4 per weight at width 512, small like Ash & Adams 2020's added noise"""
    reset_optimizer: bool = False
    """reset the optimizer's state (B.1: "resetting only the optimizer state")"""
    redo: bool = False
    """recycle dormant units, mlp and cnn only (ReDo, Sokar et al. 2023; not in the paper)"""
    redo_tau: float = 0.1
    """ReDo's dormancy threshold (Sokar et al. 2023 use 0.1); also the threshold of stats/dormant_units"""

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
                 "hessian_batch_size", "hessian_iters"):
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


@torch.no_grad()
def eval_values(network, x):
    """Values in eval mode, the network's mode left as it was: no dropout, and BatchNorm on its running statistics
    (which this does not update), so each image's values are independent of the batch it comes in."""
    was_training = network.training
    values = network.values(network.eval()(x))
    network.train(was_training)
    return values


def td_targets(q_network, target_network, next_images, rewards, gamma, double_q):
    """Bootstrap targets ``r + gamma Q_target(s', a*)``, ``a*`` the online network's argmax with Double-Q; eval mode."""
    next_values = eval_values(target_network, next_images)
    greedy = (eval_values(q_network, next_images) if double_q else next_values).argmax(1, keepdim=True)
    return rewards + gamma * next_values.gather(1, greedy).squeeze(1)


def td_loss(q_network, target_network, images, batch, gamma, double_q, train=True):
    """Eq. 1 for one network: the squared TD error of the taken actions (two-hot: cross-entropy to the encoded
    target). Targets are computed in eval mode, the online forward that is trained in train mode (``train=False``:
    in the network's current mode, for the probe's statistics and Hessian)."""
    obs, actions, rewards, next_obs = batch
    targets = td_targets(q_network, target_network, images[next_obs], rewards, gamma, double_q)
    out = (q_network.train() if train else q_network)(images[obs])
    taken = out[torch.arange(len(actions), device=actions.device), actions]
    return q_network.loss(taken, targets).mean(), q_network.values(out).detach()


def stacked_td_loss(q_stack, target_stack, images, batch, gamma, double_q):
    """``td_loss`` for every seed at once, one vmapped forward per network: ``(N,)`` losses and mean Q-values, seed
    k's from its own network, target network and ``(N, batch)`` minibatch row."""
    obs, actions, rewards, next_obs = batch
    network = q_stack.template  # values and loss need no parameters
    with torch.no_grad():
        next_values = network.values(target_stack.call(images[next_obs], train=False))
        online = network.values(q_stack.call(images[next_obs], train=False)) if double_q else next_values
        targets = rewards + gamma * next_values.gather(2, online.argmax(2, keepdim=True)).squeeze(2)
    out = q_stack.call(images[obs], train=True)
    seeds, rows = torch.arange(len(obs), device=obs.device)[:, None], torch.arange(obs.shape[1], device=obs.device)
    taken = out[seeds, rows, actions]
    return network.loss(taken, targets).mean(1), network.values(out).detach().flatten(1).mean(1)


@torch.no_grad()
def act(q_stack, images, obs, epsilon, generators):
    """Epsilon-greedy actions ``(N, num_envs)`` for each seed's observation indices (greedy in eval mode), seed k's
    exploration drawn from ``generators[k]``; no host sync."""
    greedy = q_stack.template.values(q_stack.call(images[obs], train=False)).argmax(-1)
    shape, device = obs.shape[1:], obs.device
    random_actions = per_seed(generators, lambda g: torch.randint(10, shape, generator=g, device=device))
    explore = per_seed(generators, lambda g: torch.rand(shape, generator=g, device=device)) < epsilon
    return torch.where(explore, random_actions, greedy)


def step_envs(envs, actions):
    """Step seed k's environments with ``actions[k]``; ``(next_obs, rewards)``, each ``(N, num_envs)``."""
    steps = [env.step(a) for env, a in zip(envs, actions)]
    return torch.stack([obs for obs, _ in steps]), torch.stack([rewards for _, rewards in steps])


def probe_plasticity(seed_args, q_networks, target_networks, images, replays, obs_shape, step, initial_parameters):
    """Sec 3.1 for one or more seeds at once (lists, one entry per seed): fit fresh random targets from a copy of
    each seed's current parameters, all seeds' fits in one lockstep (``run_probes``); before that, each seed's
    statistics of Sec 5.2 on the same inputs and the TD Hessian's top eigenvalue (``network_statistics``). Returns
    ``[(ProbeResult, metrics)]``, one per seed. Each seed's probe draws only from its own generators (its inputs,
    minibatches and the fits' dropout), seeded from its run seed and ``step``, so the agents are untouched: their
    weights after N steps are bit-identical whatever the probe settings."""
    args, inputs, metrics, fit_seeds = seed_args[0], [], [], []
    for run_args, q_network, target_network, replay, initial in zip(seed_args, q_networks, target_networks, replays,
                                                                    initial_parameters, strict=True):
        # The middle word once seeded the fits' dropout (now drawn from the fit seed's generator); kept so that
        # the inputs and minibatches are drawn as before.
        inputs_seed, _, fit_seed = np.random.SeedSequence([run_args.seed, step]).generate_state(3).tolist()
        generator = torch.Generator(images.device).manual_seed(inputs_seed)
        pick = torch.randint(replay.size, (args.probe_inputs,), generator=generator, device=images.device)
        inputs.append(images[replay.obs[pick]])
        metrics.append({})
        if args.stats or args.hessian:
            batch = replay.sample(args.hessian_batch_size, generator)
            metrics[-1] = network_statistics(args, q_network, target_network, images, inputs[-1], batch, initial)
        fit_seeds.append(fit_seed)
    results = run_probes(q_networks, lambda: build_q_network(args, obs_shape), torch.stack(inputs),
                         lambda params: build_optimizer(args, params), num_targets=args.probe_targets,
                         steps=args.probe_steps, batch_size=args.probe_batch_size, seeds=fit_seeds)
    return list(zip(results, metrics))


def intervene(args, q_stack, optimizer, replay, images, obs_shape, generators, rng_states):
    """Apply the chosen interventions of Sec 6.2 / B.1 and ReDo to every seed, in place: each seed's
    re-initialisations from its own global-RNG stream, its ReDo batch from its own generator. Optimizer state is
    reset for all seeds at once (they intervene at the same steps), which for each seed is what a single run does."""
    device = images.device
    redo_obs = replay.sample(args.batch_size, generators)[0] if args.redo else None  # the agent's batch size, as ReDo
    for k, network in enumerate(q_stack.modules):
        with global_rng(rng_states, k, device):
            if args.reset_last_layer:
                reset_last_layer(network)
            if args.shrink_perturb:
                shrink_perturb(network, build_q_network(args, obs_shape).to(device), args.shrink, args.perturb)
            if args.redo:
                redo(network, optimizer_view(optimizer, q_stack, k), images[redo_obs[k]], args.redo_tau)
    if args.reset_last_layer:  # the head's moments belong to the old weights
        reset_optimizer_state(optimizer, [q_stack.params["head.weight"], q_stack.params["head.bias"]])
    if args.reset_optimizer:
        reset_optimizer_state(optimizer)


def network_statistics(args, q_network, target_network, images, inputs, batch, initial_parameters):
    """The statistics of Sec 5.2 on the probe ``inputs``, the TD gradient norm and, with --hessian, the top
    eigenvalue of the TD loss's Hessian on ``batch`` (Fig 14); all in eval mode (no dropout, BatchNorm on its
    running statistics, which stay untouched)."""
    def loss_fn():
        return td_loss(q_network, target_network, images, batch, args.gamma, args.double_q, train=False)[0]

    metrics = {}
    if args.stats:
        metrics = plasticity_statistics(q_network, inputs, tau=args.redo_tau, initial_parameters=initial_parameters,
                                        loss_fn=loss_fn)
    if args.hessian:
        with eval_mode(q_network):
            matvec, dim = hessian_matvec(loss_fn, list(q_network.parameters()))
            metrics["curvature/hessian_top"] = top_eigenvalue(matvec, dim, args.hessian_iters)
    return metrics


def seed_args(args, k):
    """The Args of seed k's single run: its seed, its run directory, one seed. With --num-seeds N > 1, --run-dir D
    gives D__seed<seed> for each seed (no --run-dir: each seed's own default name)."""
    seed = args.seed + k
    run_dir = args.run_dir and (f"{args.run_dir}__seed{seed}" if args.num_seeds > 1 else args.run_dir)
    return dataclasses.replace(args, seed=seed, num_seeds=1, run_dir=run_dir or None)


def train(args):
    """Train ``args.num_seeds`` agents in lockstep, seed k exactly as its single run ``seed_args(args, k)`` (one
    seed is the plain single run). Returns the run's summary; with several seeds ``{"status", "runs"}``, the
    status the worst of theirs (interrupted, then diverged)."""
    validate(args)
    runs = [Run(seed_args(args, k), total="total_steps") for k in range(args.num_seeds)]
    if all(run.finished for run in runs):
        return combined_summary([run.finished for run in runs])
    try:
        device = select_device(args.cuda)
        images, labels = load_dataset(args.dataset, args.data_dir, train=True, device=device)
        if args.num_images:
            images, labels = images[:args.num_images], labels[:args.num_images]
        obs_shape, n = tuple(images.shape[1:]), args.num_seeds
        q_networks, target_networks, initial_parameters, envs, rng_states = [], [], [], [], []
        for run in runs:  # each seed set up exactly as its single run
            seed_everything(run.args.seed)
            try:
                envs.append(ClassificationMDP(images, labels, args.variant, args.num_envs, seed=run.args.seed))
            except ValueError as e:
                raise UsageError(f"{e}; use more --num-images") from None
            q_networks.append(build_q_network(args, obs_shape).to(device))
            target_networks.append(build_q_network(args, obs_shape).to(device))
            target_networks[-1].load_state_dict(q_networks[-1].state_dict())
            initial_parameters.append([p.detach().clone() for p in q_networks[-1].parameters()])  # distance_from_init
            cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
            rng_states.append((torch.get_rng_state(), cuda_rng))
        ckpts = [None if run.finished else run.load_checkpoint(device) for run in runs]
    except UsageError:
        for run in runs:
            run.abandon()
        raise
    q_stack, target_stack = SeedStack(q_networks), SeedStack(target_networks)
    optimizer = build_optimizer(args, q_stack.params.values())  # elementwise: N independent optimizers
    replay = StackedReplay(n, args.buffer_size, device)
    generators = [torch.Generator(device).manual_seed(run.args.seed) for run in runs]
    q_stack.dropout_generators = [dropout_generator(run.args.seed, device) for run in runs]  # the ViT's masks
    labels_of = torch.stack([env.labels for env in envs])  # random_label: each seed its own relabelling
    step, stats = 0, torch.zeros(n, 4, device=device)
    probe_history, probes = [[] for _ in runs], [[] for _ in runs]

    active = [k for k, run in enumerate(runs) if not run.finished]  # not diverged: these train, log and save
    if args.resume:
        # a seed that diverged before keeps a slot, filled with a live seed's state: its numbers are never read
        ckpts = [ckpt if k in active else ckpts[active[0]] for k, ckpt in enumerate(ckpts)]
        for k, ckpt in enumerate(ckpts):
            q_stack.modules[k].load_state_dict(ckpt["q_network"])
            target_stack.modules[k].load_state_dict(ckpt["target_network"])
            envs[k].load_state_dict(ckpt["env"])
            generators[k].set_state(ckpt["generator"].cpu())
            q_stack.dropout_generators[k].set_state(ckpt["dropout_generator"].cpu())
            rng_states[k] = ckpt["seed_rng"]
            probe_history[k], probes[k], initial_parameters[k] = (ckpt["probe_history"], ckpt["probes"],
                                                                  ckpt["initial_parameters"])
        load_optimizer_states(optimizer, [ckpt["optimizer"] for ckpt in ckpts])
        replay.load_state_dicts([ckpt["replay"] for ckpt in ckpts])
        stats, obs = torch.stack([ckpt["stats"] for ckpt in ckpts]), torch.stack([ckpt["obs"] for ckpt in ckpts])
        step = ckpts[active[0]]["step"]
        check(all(ckpts[k]["step"] == step for k in active), "the seeds' checkpoints are at different steps: resume "
              "each seed's run directory on its own (--num-seeds 1)")
    else:
        obs = torch.stack([env.reset() for env in envs])
        for _ in range(args.learning_starts):  # fill the replay with uniformly random actions
            actions = per_seed(generators, lambda g: torch.randint(10, obs.shape[1:], generator=g, device=device))
            next_obs, rewards = step_envs(envs, actions)
            replay.add(obs, actions, rewards, next_obs)
            obs = next_obs

    for k in active:
        runs[k].start(step)
    share_signals([runs[k] for k in active])
    print(f"device {device}, {n} seed(s), {sum(p[0].numel() for p in q_stack.params.values()):,} parameters each")

    def save_checkpoint(k):
        runs[k].save_checkpoint({
            "q_network": q_stack.state_dict(k), "target_network": target_stack.state_dict(k),
            "optimizer": optimizer_state(optimizer, q_stack, k), "replay": replay.state_dict(k),
            "env": envs[k].state_dict(), "generator": generators[k].get_state(),
            "dropout_generator": q_stack.dropout_generators[k].get_state(), "seed_rng": rng_states[k],
            "step": step, "probe_history": probe_history[k], "stats": stats[k], "obs": obs[k], "probes": probes[k],
            "initial_parameters": initial_parameters[k]}, step)

    def probe_and_log(due):
        """The probes of seeds ``due`` at ``step``, in lockstep (--probe-seed-batch seeds at a time); a signal
        abandons them, and the resumed run redoes them."""
        chunk = args.probe_seed_batch or max(len(due), 1)  # no seed due: no group
        for group in (due[i:i + chunk] for i in range(0, len(due), chunk)):
            with contextlib.ExitStack() as measuring:
                for k in group:
                    measuring.enter_context(runs[k].measurement())
                results = probe_plasticity([runs[k].args for k in group], [q_stack.modules[k] for k in group],
                                           [target_stack.modules[k] for k in group], images,
                                           [replay.view(k) for k in group], obs_shape, step,
                                           [initial_parameters[k] for k in group])
                plasticities = torch.stack([result.plasticity for result, _ in results]).tolist()  # one host sync
            for k, (result, metrics), plasticity in zip(group, results, plasticities):
                probe_history[k].append((step, result.curves.mean(0).cpu(), plasticity))
                row = runs[k].log(step, {"probe/final_loss": result.final_losses.mean(),
                                         "probe/baseline": result.baseline, "probe/plasticity": plasticity,
                                         "probe/plasticity_loss": probe_history[k][0][2] - plasticity, **metrics})
                probes[k].append(row)  # summary.json's per-probe trajectories: step, P, final loss, statistics
                print(f"step {step:>8,}  seed {runs[k].args.seed}  probe: final loss {row['probe/final_loss']:.4f}  "
                      f"P {plasticity:.4f}")

    def probe_due(k):
        return args.probe_every and step % args.probe_every == 0 and (
            not probe_history[k] or probe_history[k][-1][0] < step)

    def live():
        return [k for k in active if not runs[k].diverged]

    last_metrics, window_start, window_time = [{} for _ in runs], step, time.time()
    steps_done = [step] * n  # a diverged seed's count stops where it diverged
    try:
        probe_and_log([k for k in live() if probe_due(k)])  # step 0, or probes a signal abandoned before the checkpoint
        while step < args.total_steps and live() and not runs[active[0]].interrupted:
            actions = act(q_stack, images, obs, args.epsilon, generators)
            next_obs, rewards = step_envs(envs, actions)
            accuracy = (actions == labels_of.gather(1, obs)).float().mean(1)  # the state that emitted obs is its class
            replay.add(obs, actions, rewards, next_obs)
            obs = next_obs

            loss, q_values = stacked_td_loss(q_stack, target_stack, images, replay.sample(args.batch_size, generators),
                                             args.gamma, args.double_q)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # the seeds share nothing, so each gets exactly its own gradient
            optimizer.step()
            step += 1
            stats += torch.stack([loss.detach(), q_values, accuracy, rewards.mean(1)], dim=1)

            if step % args.target_period == 0:
                target_stack.copy_from(q_stack)
            if step % (args.intervention_period or args.target_period) == 0:  # after the copy: targets keep theta
                intervene(args, q_stack, optimizer, replay, images, obs_shape, generators, rng_states)
            if step % args.log_every == 0:
                sps = (step - window_start) * args.num_envs / (time.time() - window_time)
                means = (stats / args.log_every).tolist()  # the one host sync per log window
                for k in live():
                    mean, steps_done[k] = means[k], step
                    last_metrics[k] = runs[k].log(step, {"losses/td_loss": mean[0], "losses/q_values": mean[1],
                                                         "charts/accuracy": mean[2], "charts/reward_rate": mean[3],
                                                         "charts/SPS": sps})
                    print(f"step {step:>8,}/{args.total_steps:,}  seed {runs[k].args.seed}  td loss {mean[0]:.4f}  "
                          f"Q {mean[1]:.3f}  accuracy {mean[2]:.3f}  SPS {sps:,.0f}")
                stats.zero_()
                window_start, window_time = step, time.time()
            due = [k for k in live() if probe_due(k) and not runs[k].stopping]
            if due:
                probe_and_log(due)
                window_start, window_time = step, time.time()  # SPS measures the agent, not the probe
            if step % (args.checkpoint_every or args.probe_every or args.total_steps) == 0:
                for k in live():
                    if not runs[k].stopping:
                        save_checkpoint(k)
    except Interrupted:
        pass  # a probe at `step` was abandoned: the checkpoints below say it is still due
    summaries = [run.finished for run in runs]
    for k in reversed(active):  # reversed: each run puts back the signal handler it found
        run, history = runs[k], probe_history[k]
        if not run.diverged:
            steps_done[k] = step
            save_checkpoint(k)  # also after completion: a raised --total-steps continues from here
        if history:
            run.save_figure(lambda: draw_probe_curves(history, f"{args.arch} on {args.dataset} {args.variant} "
                                                               f"(seed {run.args.seed})"), "fig4_probe_curves.png")
            torch.save({"steps": [h[0] for h in history], "curves": torch.stack([h[1] for h in history]),
                        "plasticity": [h[2] for h in history]}, os.path.join(run.run_dir, "probe_curves.pt"))
        final = {key: v for key, v in last_metrics[k].items() if key != "step"}
        if probes[k]:
            final.update({key: v for key, v in probes[k][-1].items() if key != "step"})  # last probe's P, stats
        done = steps_done[k] >= args.total_steps and not probe_due(k)
        summaries[k] = run.finish(steps_done[k], done=done, metrics=final, probes=probes[k])
    return combined_summary(summaries)


if __name__ == "__main__":
    main(train, Args)
