"""DQN on the classification MDPs of Sec 3.2, with the plasticity probe of Sec 2.2 every few thousand steps.

Sec 3.2, 5.1 and A.2. Run: ``python dqn_classification_mdp.py --dataset mnist --variant true_label --arch mlp``.
Everything lives on the device: images are a uint8 tensor, the env steps all copies at once, and the replay stores
image indices. One iteration steps the ``num_envs`` envs once and takes one optimizer step.
"""
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
from common.probe import run_probe
from common.run import Interrupted, Run
from common.stats import plasticity_statistics


@dataclass
class Args:
    exp_name: str = "dqn_classification_mdp"
    """the name of this experiment (CleanRL)"""
    seed: int = 1
    """seed of the experiment"""
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
    for name in ("total_steps", "num_envs", "buffer_size", "batch_size", "target_period", "log_every", "width",
                 "probe_steps", "probe_targets", "probe_inputs", "probe_batch_size", "learning_rate",
                 "hessian_batch_size", "hessian_iters"):
        check(getattr(args, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("probe_every", "checkpoint_every", "num_images", "learning_starts", "epsilon", "weight_decay",
                 "adam_eps", "adam_eps_root", "rmsprop_eps", "intervention_period", "shrink", "perturb", "redo_tau"):
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


class IndexReplay:
    """A circular replay of (observation index, action, reward, next observation index), all on the device."""

    def __init__(self, capacity, device):
        self.capacity, self.pos, self.size = capacity, 0, 0  # Python ints: sampling needs no host sync
        self.obs = torch.zeros(capacity, dtype=torch.long, device=device)
        self.next_obs = torch.zeros_like(self.obs)
        self.actions = torch.zeros_like(self.obs)
        self.rewards = torch.zeros(capacity, device=device)

    def add(self, obs, actions, rewards, next_obs):
        slots = (self.pos + torch.arange(len(obs), device=obs.device)) % self.capacity
        self.obs[slots], self.actions[slots], self.rewards[slots], self.next_obs[slots] = obs, actions, rewards, next_obs
        self.pos = (self.pos + len(obs)) % self.capacity
        self.size = min(self.size + len(obs), self.capacity)

    def sample(self, batch_size, generator):
        idx = torch.randint(self.size, (batch_size,), generator=generator, device=self.obs.device)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx]

    def state_dict(self):
        return {k: getattr(self, k) for k in ("pos", "size", "obs", "next_obs", "actions", "rewards")}

    def load_state_dict(self, state):
        for k, v in state.items():
            setattr(self, k, v)


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
    """Eq. 1: the squared TD error of the taken actions (two-hot: cross-entropy to the encoded target).
    Targets are computed in eval mode, the online forward that is trained in train mode (``train=False``: in the
    network's current mode, for the probe's statistics)."""
    obs, actions, rewards, next_obs = batch
    targets = td_targets(q_network, target_network, images[next_obs], rewards, gamma, double_q)
    out = (q_network.train() if train else q_network)(images[obs])
    taken = out[torch.arange(len(actions), device=actions.device), actions]
    return q_network.loss(taken, targets).mean(), q_network.values(out).detach()


def act(q_network, images, obs, epsilon, generator):
    """Epsilon-greedy actions for a batch of observation indices (greedy in eval mode), with no host sync."""
    greedy = eval_values(q_network, images[obs]).argmax(1)
    random_actions = torch.randint(10, obs.shape, generator=generator, device=obs.device)
    explore = torch.rand(obs.shape, generator=generator, device=obs.device) < epsilon
    return torch.where(explore, random_actions, greedy)


def probe_plasticity(args, q_network, target_network, images, replay, obs_shape, step, initial_parameters):
    """Sec 3.1: fit fresh random targets from a copy of the current parameters; before that, the statistics of
    Sec 5.2 on the same inputs and the TD Hessian's top eigenvalue (``network_statistics``). Returns
    ``(ProbeResult, metrics)``. The probe draws from its own generator and a forked global RNG, seeded from the
    run seed and ``step``, so the agent is untouched: its weights after N steps are bit-identical whatever the
    probe settings."""
    inputs_seed, dropout_seed, fit_seed = np.random.SeedSequence([args.seed, step]).generate_state(3).tolist()
    generator = torch.Generator(images.device).manual_seed(inputs_seed)
    pick = torch.randint(replay.size, (args.probe_inputs,), generator=generator, device=images.device)
    inputs = images[replay.obs[pick]]
    metrics = {}
    if args.stats or args.hessian:
        batch = replay.sample(args.hessian_batch_size, generator)
        metrics = network_statistics(args, q_network, target_network, images, inputs, batch, initial_parameters)
    with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
        torch.manual_seed(dropout_seed)  # dropout in the fits draws from the global RNG, as the agent's dropout does
        result = run_probe(q_network, lambda: build_q_network(args, obs_shape), inputs,
                           lambda params: build_optimizer(args, params), num_targets=args.probe_targets,
                           steps=args.probe_steps, batch_size=args.probe_batch_size, seed=fit_seed)
    return result, metrics


def intervene(args, q_network, optimizer, replay, images, obs_shape, generator):
    """Apply the chosen interventions of Sec 6.2 / B.1 and ReDo, in place, in this order."""
    if args.reset_last_layer:
        reset_last_layer(q_network, optimizer)
    if args.shrink_perturb:
        fresh = build_q_network(args, obs_shape).to(images.device)
        shrink_perturb(q_network, fresh, args.shrink, args.perturb)
    if args.reset_optimizer:
        reset_optimizer_state(optimizer)
    if args.redo:  # dormancy on a replay batch of the agent's batch size, as the ReDo code scores its batch
        redo(q_network, optimizer, images[replay.sample(args.batch_size, generator)[0]], args.redo_tau)


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


def plot_probe_curves(probe_history, title):
    """Fig 4: probe learning curves (mean over targets) from successive checkpoints, and P over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_curves, ax_p) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.cm.viridis(torch.linspace(0, 1, len(probe_history)).tolist())
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


def train(args):
    validate(args)
    run = Run(args, total="total_steps")
    if run.finished:
        return run.finished
    seed_everything(args.seed)
    device = select_device(args.cuda)

    images, labels = load_dataset(args.dataset, args.data_dir, train=True, device=device)
    if args.num_images:
        images, labels = images[:args.num_images], labels[:args.num_images]
    try:
        env = ClassificationMDP(images, labels, args.variant, args.num_envs, seed=args.seed)
    except ValueError as e:
        raise UsageError(f"{e}; use more --num-images") from None
    obs_shape = tuple(images.shape[1:])
    q_network = build_q_network(args, obs_shape).to(device)
    target_network = build_q_network(args, obs_shape).to(device)
    target_network.load_state_dict(q_network.state_dict())
    initial_parameters = [p.detach().clone() for p in q_network.parameters()]  # for stats/distance_from_init
    optimizer = build_optimizer(args, q_network.parameters())
    replay = IndexReplay(args.buffer_size, device)
    generator = torch.Generator(device).manual_seed(args.seed)
    step, probe_history, probes, stats = 0, [], [], torch.zeros(4, device=device)

    ckpt = run.load_checkpoint(device)
    if ckpt:
        q_network.load_state_dict(ckpt["q_network"])
        target_network.load_state_dict(ckpt["target_network"])
        optimizer.load_state_dict(ckpt["optimizer"])
        replay.load_state_dict(ckpt["replay"])
        env.load_state_dict(ckpt["env"])
        generator.set_state(ckpt["generator"].cpu())
        step, probe_history, stats, obs = ckpt["step"], ckpt["probe_history"], ckpt["stats"], ckpt["obs"]
        probes, initial_parameters = ckpt["probes"], ckpt["initial_parameters"]
    else:
        obs = env.reset()
        for _ in range(args.learning_starts):  # fill the replay with uniformly random actions
            actions = torch.randint(10, obs.shape, generator=generator, device=device)
            next_obs, rewards = env.step(actions)
            replay.add(obs, actions, rewards, next_obs)
            obs = next_obs

    run.start(step)
    print(f"device {device}, {sum(p.numel() for p in q_network.parameters()):,} parameters")

    def save_checkpoint():
        run.save_checkpoint({"q_network": q_network.state_dict(), "target_network": target_network.state_dict(),
                             "optimizer": optimizer.state_dict(), "replay": replay.state_dict(),
                             "env": env.state_dict(), "generator": generator.get_state(), "step": step,
                             "probe_history": probe_history, "stats": stats, "obs": obs, "probes": probes,
                             "initial_parameters": initial_parameters}, step)

    def probe_and_log():
        """The probe due at ``step``; a signal abandons it, and the resumed run redoes it (probe_history says so)."""
        with run.measurement():
            result, metrics = probe_plasticity(args, q_network, target_network, images, replay, obs_shape, step,
                                               initial_parameters)
            plasticity = result.plasticity.item()
        probe_history.append((step, result.curves.mean(0).cpu(), plasticity))
        row = run.log(step, {"probe/final_loss": result.final_losses.mean(), "probe/baseline": result.baseline,
                             "probe/plasticity": plasticity, "probe/plasticity_loss": probe_history[0][2] - plasticity,
                             **metrics})
        probes.append(row)  # summary.json's per-probe trajectories: step, plasticity, final loss, statistics
        print(f"step {step:>8,}  probe: final loss {row['probe/final_loss']:.4f}  P {plasticity:.4f}")

    def probe_due():
        return args.probe_every and step % args.probe_every == 0 and (not probe_history or probe_history[-1][0] < step)

    last_metrics, window_start, window_time = {}, step, time.time()
    try:
        if probe_due():  # step 0, or a probe that a signal abandoned before the checkpoint
            probe_and_log()
        while step < args.total_steps and not run.stopping:
            actions = act(q_network, images, obs, args.epsilon, generator)
            next_obs, rewards = env.step(actions)
            accuracy = (actions == env.labels[obs]).float().mean()  # the state that emitted obs is its class
            replay.add(obs, actions, rewards, next_obs)
            obs = next_obs

            loss, q_values = td_loss(q_network, target_network, images, replay.sample(args.batch_size, generator),
                                     args.gamma, args.double_q)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            stats += torch.stack([loss.detach(), q_values.mean(), accuracy, rewards.mean()])

            if step % args.target_period == 0:
                target_network.load_state_dict(q_network.state_dict())
            if step % (args.intervention_period or args.target_period) == 0:  # after the copy: targets keep theta
                intervene(args, q_network, optimizer, replay, images, obs_shape, generator)
            if step % args.log_every == 0:
                sps = (step - window_start) * args.num_envs / (time.time() - window_time)
                mean = (stats / args.log_every).tolist()  # the one host sync per log window
                last_metrics = run.log(step, {"losses/td_loss": mean[0], "losses/q_values": mean[1],
                                              "charts/accuracy": mean[2], "charts/reward_rate": mean[3],
                                              "charts/SPS": sps})
                print(f"step {step:>8,}/{args.total_steps:,}  td loss {mean[0]:.4f}  Q {mean[1]:.3f}  "
                      f"accuracy {mean[2]:.3f}  SPS {sps:,.0f}")
                stats.zero_()
                window_start, window_time = step, time.time()
            if probe_due() and not run.stopping:
                probe_and_log()
                window_start, window_time = step, time.time()  # SPS measures the agent, not the probe
            if step % (args.checkpoint_every or args.probe_every or args.total_steps) == 0 and not run.stopping:
                save_checkpoint()
    except Interrupted:
        pass  # the probe at `step` was abandoned: the checkpoint below says it is still due
    if not run.diverged:
        save_checkpoint()  # also after completion: a raised --total-steps continues from here
    if probe_history:
        run.save_figure(lambda: plot_probe_curves(
            probe_history, f"{args.arch} on {args.dataset} {args.variant} (seed {args.seed})"), "fig4_probe_curves.png")
        torch.save({"steps": [h[0] for h in probe_history], "curves": torch.stack([h[1] for h in probe_history]),
                    "plasticity": [h[2] for h in probe_history]}, os.path.join(run.run_dir, "probe_curves.pt"))
    final = {k: v for k, v in last_metrics.items() if k != "step"}
    if probes:
        final.update({k: v for k, v in probes[-1].items() if k != "step"})  # the last probe's plasticity, stats
    return run.finish(step, done=step >= args.total_steps and not probe_due(), metrics=final, probes=probes)


if __name__ == "__main__":
    main(train, Args)
