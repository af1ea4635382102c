"""Double DQN on the Arcade Learning Environment, with and without LayerNorm (Lyle et al. 2023, Sec 6.3, A.3).

The protocol is DQN Zoo's tuned double_q agent (Quan & Ostrovski 2020) with the paper's two deviations (replay
capacity 100,000, training epsilon 0.1) and LayerNorm after each hidden layer (`--layer-norm`, the default;
`--no-layer-norm` is the baseline). Every `--grad-cov-every` agent steps it records the gradient covariance of a
sampled batch (eq. 3; Fig 7 bottom, 19-20).

    python ddqn_atari_layernorm.py --env-id ALE/Breakout-v5                    # one run
    python ddqn_atari_layernorm.py aggregate --runs-dir runs                    # Fig 7 (top) over many runs

Step counts are agent steps (4 frames each, summed over the `--num-envs` environments) unless the name says frames.
The emulators step in C++ threads (common.science.atari.VectorAtari); the frames, the replay and the networks stay on the
device. SIGTERM or SIGUSR1 (Slurm preemption) writes `checkpoint.pt` and exits; `--resume` continues exactly where
the run stopped. A checkpoint every `--checkpoint-every` agent steps bounds what a SIGKILL loses. `--num-seeds N`
trains N seeds in lockstep in one process, each its single run's equal (common.runtime.seeds).

The same agent runs on MinAtar (Young & Tian 2019; common.science.minatar), the CPU-scale stand-in for the ALE: only the
environments, the network (their conv 16 3x3 -> 128 -> actions, common.science.networks.MinAtarQNetwork, with LayerNorm
as above) and the defaults of their examples/dqn.py change with the id (the fields whose docs say MinAtar); the
Double-Q target and the paper's RMSProp stay.

    python ddqn_atari_layernorm.py --env-id MinAtar/Breakout-v1 --no-layer-norm
"""
if __name__ == "__main__":  # a signal while the libraries below import ends the process with 75, as one later does
    from common.runtime import early_signals

    early_signals.install()

import os
import sys
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.analysis.plots import draw_grad_cov, draw_spectral_densities
from common.errors import check
from common.runtime.cli import main, select_device
from common.runtime.seeds import OneSeed, RunGroup, StackedOptimizer, stack_seeds
from common.runtime.sync import allowed_sync
from common.science.atari import (FrameReplay, VectorAtari, check_env_id, game_name, human_normalized,
                                  load_atari_scores, write_video)
from common.science.grad_cov import gradient_covariance, interference_summary, per_example_grads
from common.science.hessian import hessian_matvec, lanczos
from common.science.minatar import MINATAR_DEFAULTS, VectorMinAtar, check_minatar_args, is_minatar
from common.science.networks import MinAtarQNetwork
from common.science.optim import RMSProp


ALE_DEFAULTS = dict(preprocessing="dqn_zoo", total_frames=200_000_000, train_frequency=4,
                    target_network_frequency=30_000, rmsprop_eps=0.01 / 32**2, epsilon_start=0.1,
                    epsilon_decay_steps=1_000_000, noop_max=30, eval_frames=500_000)  # DQN Zoo and A.3 (Args)


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment: the script's file name (CleanRL)"""
    seed: int = 1
    """seed of the run (DQN Zoo default 1)"""
    num_seeds: int = 1
    """train N agents, seeds seed .. seed+N-1, in lockstep in one process (common.runtime.seeds: their networks are
    stacked, their forwards and updates one vmapped call, as several runs share one GPU); each equals its single run
    and writes its own run directory, <run-dir>__seed<seed> with --run-dir"""
    cuda: bool = True
    """use the GPU when there is one (CleanRL)"""
    track: bool = False
    """log to Weights & Biases as well (CleanRL)"""
    run_dir: str | None = None
    """run directory; default runs/<exp_name>__<seed>__<time>; required with --resume"""
    capture_video: bool = False
    """save an mp4 of the first episode of each evaluation to <run_dir>/videos (CleanRL)"""
    save_model: bool = False
    """save the final online network to <run_dir>/<exp_name>.model (CleanRL)"""

    env_id: str = "ALE/Breakout-v5"
    """ALE game, any version: every id runs under DQN Zoo's settings (frameskip 1 in the emulator, no sticky actions,
    minimal action set; gym_atari.py); common.science.atari.atari_env_ids() maps the 57 games to their ids. Or a MinAtar
    game, MinAtar/<Game>-v1 (common.science.minatar): Young & Tian (2019)'s network and their examples/dqn.py's defaults
    wherever a field below says "MinAtar" (default None resolves by the id's family)"""
    preprocessing: Literal["dqn_zoo", "gymnasium"] | None = None
    """frames and stacks as DQN Zoo's processors.atari (max of the last two RGB frames, luminance, bilinear 84x84,
    zero-padded first stacks; the ALE default) or as gymnasium's AtariPreprocessing (ALE grey, INTER_AREA,
    first-frame padding); ALE only"""
    total_frames: int | None = None
    """environment frames of training (A.3: 200M on the ALE, 4 per agent step; MinAtar 5M, dqn.py's NUM_FRAMES,
    one per agent step)"""
    num_envs: int = 1
    """environments stepped at once, acting with one batched forward (DQN Zoo: 1). N > 1 interleaves N episodes in
    the replay (one lane of buffer_size / N frames each), draws epsilon per environment, and makes the updates
    come in bursts of N / train_frequency per vector step; the replay ratio, the target period and every schedule
    stay in agent steps summed over the environments, so each period must be a multiple of N"""
    env_threads: int = 0
    """C++ threads stepping the emulators (0: ale_py's default)"""
    layer_norm: bool = True
    """LayerNorm after each hidden layer (Sec 6.3); --no-layer-norm is the DQN Zoo baseline"""
    channels_last: bool = True
    """channels_last CNN (NHWC, the layout of DQN Zoo's Haiku convolutions): the same numbers in the memory layout
    the convolution kernels prefer (its speed: benchmarks/bench_ddqn_atari.py)"""
    compile: bool = False
    """torch.compile the update's forward and backward (the optimizer step stays eager): equal to eager to float
    rounding, compiled once at the first update; its speed-up is measured in
    benchmarks/bench_ddqn_atari.py (part b) and on a GPU by benchmarks/gpu_suite.sh"""

    buffer_size: int = 100_000
    """replay capacity in frames, about one transition each (A.3: 100,000; DQN Zoo uses 1M)"""
    min_replay_capacity_fraction: float = 0.05
    """learning starts once the replay holds this fraction of its capacity; uniformly random actions until then
    (DQN Zoo double_q/run_atari.py and agent.py: 0.05, so 5,000 transitions at the paper's capacity)"""
    batch_size: int = 32
    """transitions per update (DQN Zoo)"""
    train_frequency: int | None = None
    """agent steps per update (ALE 4, DQN Zoo learn_period: 16 frames; MinAtar 1, dqn.py's TRAINING_FREQ)"""
    target_network_frequency: int | None = None
    """agent steps between target updates (ALE 30,000, DQN Zoo double_q: 120k frames; MinAtar 1,000, dqn.py's
    TARGET_NETWORK_UPDATE_FREQ)"""
    gamma: float = 0.99
    """discount (DQN Zoo additional_discount)"""
    learning_rate: float = 2.5e-4
    """RMSProp learning rate (DQN Zoo)"""
    rmsprop_decay: float = 0.95
    """RMSProp decay (DQN Zoo)"""
    rmsprop_eps: float | None = None
    """RMSProp epsilon inside the square root, centered (ALE: DQN Zoo optimizer_epsilon = 0.01 / 32**2; MinAtar:
    0.01**2, the denominator's floor of dqn.py's torch RMSprop with eps 0.01 outside the root)"""
    grad_error_bound: float = 1.0 / 32
    """bound on the TD-error gradient under the batch mean (DQN Zoo grad_error_bound)"""
    max_abs_reward: float = 1.0
    """reward clipping (DQN Zoo max_abs_reward)"""
    epsilon_start: float | None = None
    """training epsilon when learning starts, the start of its decay (ALE 0.1, A.3: fixed 0.1, DQN Zoo: 1.0;
    MinAtar 1.0, dqn.py's EPSILON)"""
    epsilon_end: float = 0.1
    """training epsilon after the decay (A.3: fixed 0.1; DQN Zoo: 0.01)"""
    epsilon_decay_steps: int | None = None
    """agent steps of the linear decay, from learning_starts (ALE 1M, DQN Zoo: 2% of 200M frames; MinAtar 100,000,
    dqn.py's FIRST_N_FRAMES)"""

    noop_max: int | None = None
    """up to this many no-op actions at each reset (DQN Zoo: 1 to 30, the ALE default); ALE only"""
    max_episode_frames: int = 108_000
    """episode cap in frames, 30 minutes (DQN Zoo), reached as a truncation (MinAtar: agent steps; dqn.py has no
    cap)"""
    eval_every: int = 250_000
    """agent steps between evaluations (DQN Zoo: one iteration of 1M frames)"""
    eval_frames: int | None = None
    """frames per evaluation (ALE 500,000, DQN Zoo num_eval_frames; MinAtar 125,000, as many agent steps, since
    dqn.py does not evaluate)"""
    eval_epsilon: float = 0.01
    """evaluation epsilon (DQN Zoo double_q)"""
    eval_envs: int = 8
    """environments of the evaluation, each running eval_frames / eval_envs frames (DQN Zoo: 1, the whole budget
    in one). Only completed episodes score, as in DQN Zoo; with several environments up to eval_envs unfinished
    episodes are dropped instead of one, which weighs short episodes a little more"""
    grad_cov_every: int = 250_000
    """agent steps between gradient-covariance snapshots (Fig 7 bottom, 19-20); 0 turns them off"""
    grad_cov_samples: int = 32
    """transitions k in each gradient-covariance matrix C_k (eq. 3)"""
    hessian_every: int = 1_000_000
    """agent steps between Hessian spectral densities of the TD loss (Fig 21-22); 0 turns them off"""
    hessian_samples: int = 512
    """transitions in the one large batch whose TD-loss Hessian is analysed (A.1: 'a single large batch')"""
    hessian_iters: int = 90
    """Lanczos steps per density (Ghorbani et al. 2019); the float64 basis holds this many parameter vectors"""
    log_every: int = 1_000
    """agent steps between metric logs (each log syncs with the device once)"""
    checkpoint_every: int = 250_000
    """agent steps between checkpoints, besides the one at the end and on SIGTERM/SIGUSR1/SIGINT: a SIGKILL loses at
    most this much (a checkpoint holds the replay, about 0.7 GB at capacity 100,000; its cost is in
    benchmarks/RESULTS.md); 0 writes one only at the end and on a signal"""
    resume: bool = False
    """continue the run in --run-dir from its checkpoint.pt"""

    def __post_init__(self):
        """Resolve the fields left None to the defaults of the id's family, here, in one place."""
        defaults = MINATAR_DEFAULTS if is_minatar(self.env_id) else ALE_DEFAULTS
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    @property
    def frame_skip(self):
        """Frames per agent step: 4 on the ALE (DQN Zoo's action repeat), 1 on MinAtar."""
        return 1 if is_minatar(self.env_id) else 4

    @property
    def learning_starts(self):
        """Agent steps (one transition each) of uniformly random warm-up before learning."""
        return int(self.min_replay_capacity_fraction * self.buffer_size)


@dataclass
class AggregateArgs:
    runs_dir: str = "runs"
    """folder holding run directories (each with args.json and summary.json)"""
    output_dir: str | None = None
    """folder for the figures and their CSV files; default --runs-dir (one protocol-<id> folder per protocol)"""
    num_boot: int = 50_000
    """stratified bootstrap replicates of the aggregates and the probability of improvement (rliable's default)"""
    num_boot_profile: int = 2_000
    """bootstrap replicates of the performance profiles (rliable's create_performance_profile default)"""
    seed: int = 0
    """seed of the bootstrap draws"""


# ---------------------------------------------------------------------------------------------------- network
class QNetwork(nn.Module):
    """DQN Zoo's double_q network: Nature CNN torso, 512 hidden units, a linear head with one bias shared by all
    actions. With layer_norm, LayerNorm sits between each hidden layer and its ReLU: it normalises all of a layer's
    units (C, H, W for a convolution) with a per-channel scale and offset, as Haiku's hk.LayerNorm does by default
    (param_axis=-1); for convolutions that is GroupNorm with one group, which also keeps channels_last (nn.LayerNorm
    over (C, H, W) copies to contiguous first). Weights and biases, the shared bias included, start
    U(+-1/sqrt(fan_in)), DQN's classic initializer (DQN Zoo networks.py: _dqn_default_initializer,
    linear_with_shared_bias); PyTorch's default init draws the same for its layers."""

    def __init__(self, num_actions, layer_norm, channels_last=False):
        super().__init__()

        def hidden(layer, channels):
            norm = nn.GroupNorm(1, channels) if isinstance(layer, nn.Conv2d) else nn.LayerNorm(channels)
            return [layer, norm if layer_norm else nn.Identity(), nn.ReLU()]

        self.torso = nn.Sequential(
            *hidden(nn.Conv2d(4, 32, 8, stride=4), 32),
            *hidden(nn.Conv2d(32, 64, 4, stride=2), 64),
            *hidden(nn.Conv2d(64, 64, 3, stride=1), 64),
            nn.Flatten(),
            *hidden(nn.Linear(3136, 512), 512),
        )
        self.head = nn.Linear(512, num_actions, bias=False)
        self.shared_bias = nn.Parameter(torch.empty(1).uniform_(-512**-0.5, 512**-0.5))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def forward(self, frames):
        x = frames.to(self.head.weight.dtype).div_(255.0).contiguous(memory_format=self.memory_format)
        return self.head(self.torso(x)) + self.shared_bias


# ---------------------------------------------------------------------------------------------------- env family
# The only places where the ALE and MinAtar differ: the environments, the network, and the replay's frames.
def make_envs(args, num_envs, seed, device):
    if is_minatar(args.env_id):
        return VectorMinAtar(args.env_id, num_envs, args.max_episode_frames, seed, device)
    return VectorAtari(args.env_id, num_envs, args.noop_max, args.max_episode_frames, seed, device,
                       args.preprocessing, args.env_threads)


def make_q_network(args, envs, device):
    if is_minatar(args.env_id):
        return MinAtarQNetwork(envs.frame_shape[0], envs.num_actions, args.layer_norm, args.channels_last).to(device)
    return QNetwork(envs.num_actions, args.layer_norm, args.channels_last).to(device)


def make_replay(args, capacity, envs, device):
    """The ALE's 4-frame stacks; on MinAtar each observation is a state, a history of 1 (dqn.py stacks none)."""
    if is_minatar(args.env_id):
        return FrameReplay(capacity, history=1, frame_shape=envs.frame_shape, device=device, lanes=envs.num_envs)
    return FrameReplay(capacity, zero_pad=args.preprocessing == "dqn_zoo", device=device, lanes=envs.num_envs)


def make_agent(args, seed, device):
    """One seed's environments (training, evaluation), online and target networks, replay, exploration generator
    and records, built as its single run builds them."""
    envs, eval_envs = make_envs(args, args.num_envs, seed, device), make_envs(args, args.eval_envs, seed, device)
    q_net, target_net = make_q_network(args, envs, device), make_q_network(args, envs, device)
    target_net.load_state_dict(q_net.state_dict())
    try:
        replay = make_replay(args, args.buffer_size, envs, device)
    except (RuntimeError, MemoryError) as e:  # torch's CPU and CUDA allocators raise RuntimeErrors
        check("alloc" not in str(e) and "out of memory" not in str(e),
              f"--buffer-size {args.buffer_size:,} does not fit in the memory of {device}: lower --buffer-size")
        raise
    records = {"episode_return": np.zeros(args.num_envs), "episode_length": np.zeros(args.num_envs, np.int64),
               "lives": np.zeros(args.num_envs, np.int64), "grad_cov": [], "hessian": [], "last": {}}
    return envs, eval_envs, q_net, target_net, replay, np.random.default_rng(seed), records


# ---------------------------------------------------------------------------------------------------- learning
def double_q_targets(rewards, terminals, gamma, next_q_online, next_q_target):
    """r + gamma (1 - terminal) Q_target(s', argmax_a Q_online(s', a)) (van Hasselt et al. 2016)."""
    best_actions = next_q_online.argmax(dim=-1, keepdim=True)
    return rewards + gamma * (1.0 - terminals) * next_q_target.gather(-1, best_actions).squeeze(-1)


def td_loss(q_net, target_net, batch, gamma, huber_delta):
    """Each seed's mean Huber loss of its double-Q TD errors, (seeds,), and its Q-values of the taken actions,
    (seeds, batch): the networks are seed stacks (common.runtime.seeds.SeedStack), each part of ``batch`` is
    (seeds, batch, ...). DQN Zoo clips the gradient of each TD error under the batch mean of 0.5 td^2 to
    +-grad_error_bound; that is exactly the gradient of a mean Huber loss with delta batch_size * grad_error_bound
    (1 at batch 32)."""
    obs, actions, rewards, terminals, next_obs = batch
    with torch.no_grad():
        targets = double_q_targets(rewards, terminals, gamma, q_net.call(next_obs), target_net.call(next_obs))
    q_values = q_net.call(obs).gather(-1, actions[..., None]).squeeze(-1)
    return F.huber_loss(q_values, targets, delta=huber_delta, reduction="none").mean(-1), q_values


def td_error_grads(q_net, target_net, batch, gamma, huber_delta):
    """(k, d) gradients of each transition's TD loss (one vmap over the batch, common.science.grad_cov)."""
    obs, actions, rewards, terminals, next_obs = batch
    with torch.no_grad():
        targets = double_q_targets(rewards, terminals, gamma, q_net(next_obs), target_net(next_obs))
    action_masks = F.one_hot(actions, q_net.head.out_features).float()  # no integer indexing inside vmap

    def loss(q_values, action_mask, target):
        return F.huber_loss((q_values * action_mask).sum(1), target, delta=huber_delta)

    memory_format, q_net.memory_format = q_net.memory_format, torch.contiguous_format  # vmap lacks channels_last
    try:
        return per_example_grads(q_net, loss, obs, action_masks, targets)
    finally:
        q_net.memory_format = memory_format


def td_loss_hessian(q_net, target_net, batch, gamma, huber_delta, num_iters):
    """Lanczos nodes and weights of the Hessian of the TD loss on one batch (Fig 21-22, common.science.hessian)."""
    one_seed = [part[None] for part in batch]
    matvec, dim = hessian_matvec(lambda: td_loss(OneSeed(q_net), OneSeed(target_net), one_seed, gamma,
                                                 huber_delta)[0][0], list(q_net.parameters()))
    return lanczos(matvec, dim, min(num_iters, dim))


def epsilon_at(step, args):
    """1 (uniformly random actions) before learning starts, then a linear decay from epsilon_start to epsilon_end
    over epsilon_decay_steps (DQN Zoo's parts.LinearSchedule, which returns its begin value 1.0 before begin_t =
    the learning start); constant 0.1 after the warm-up with the paper's defaults."""
    if step < args.learning_starts:
        return 1.0
    fraction = min((step - args.learning_starts) / max(args.epsilon_decay_steps, 1), 1.0)
    return args.epsilon_start + fraction * (args.epsilon_end - args.epsilon_start)


# ---------------------------------------------------------------------------------------------------- acting
def act(q_net, replays, epsilon, rngs, num_actions):
    """Epsilon-greedy actions of every seed's environments, (seeds, envs) numpy: each seed draws its exploration
    from its own generator; one forward of all seeds and one host transfer of the greedy actions (none while every
    environment explores, as in the warm-up)."""
    explore = np.stack([rng.random(replay.lanes) < epsilon for rng, replay in zip(rngs, replays)])
    random_actions = np.stack([rng.integers(num_actions, size=replay.lanes) for rng, replay in zip(rngs, replays)])
    if explore.all():
        return random_actions
    with torch.no_grad(), allowed_sync():  # the emulators need the actions
        greedy = q_net.call(stack_seeds([replay.latest() for replay in replays])).argmax(-1).cpu().numpy()
    return np.where(explore, random_actions, greedy)


@torch.no_grad()
def evaluate(q_net, envs, args, seed, device, video_path=None):
    """Epsilon-greedy episodes (epsilon 0.01) for eval_frames frames on the evaluation's own environments, each
    running its share of the budget. Returns the mean return of the episodes completed within the budget, as DQN
    Zoo reports it, and how many completed. Stacks come from a small FrameReplay, padded as the training ones; the
    video shows environment 0's first episode in the pooled RGB frames the agent sees."""
    rng = np.random.default_rng(seed)
    envs.seed(seed)
    stacks = make_replay(args, 8 * envs.num_envs, envs, device)
    stacks.start_episodes(envs.reset()[0])
    returns, episode_returns = [], np.zeros(envs.num_envs)
    video = [envs.last_rgb[0]] if video_path else None
    no_reward = torch.zeros(envs.num_envs, device=device)
    no_terminal = torch.zeros(envs.num_envs, dtype=torch.bool, device=device)
    for _ in range(args.eval_frames // args.frame_skip // envs.num_envs):
        actions = act(OneSeed(q_net), [stacks], args.eval_epsilon, [rng], envs.num_actions)[0]
        frames, rewards, terminated, truncated, _ = envs.step(actions)
        episode_returns += rewards
        stacks.add(torch.as_tensor(actions, device=device), no_reward, no_terminal, frames)
        done = np.flatnonzero(terminated | truncated)
        if video is not None:
            video.append(envs.last_rgb[0])
        if len(done):
            returns += episode_returns[done].tolist()
            episode_returns[done] = 0.0
            if video is not None and 0 in done:  # the first episode only
                write_video(video, video_path)
                video = None
            stacks.start_episodes(envs.reset(done)[0], done)
    if video:  # the first episode did not finish
        write_video(video, video_path)
    return float(np.mean(returns)) if returns else float("nan"), len(returns)


# ---------------------------------------------------------------------------------------------------- training
PERIODS = ("target_network_frequency", "eval_every", "log_every", "checkpoint_every", "grad_cov_every",
           "hessian_every")  # in agent steps summed over the environments: multiples of --num-envs


def check_args(args):
    check_minatar_args(args) if is_minatar(args.env_id) else check_env_id(args.env_id)
    for name in ("total_frames", "num_seeds", "num_envs", "eval_envs", "buffer_size", "batch_size", "train_frequency",
                 "target_network_frequency", "eval_every", "eval_frames", "log_every", "max_episode_frames",
                 "grad_cov_samples", "hessian_samples", "hessian_iters"):
        check(getattr(args, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("checkpoint_every", "grad_cov_every", "hessian_every", "noop_max", "env_threads"):
        check(getattr(args, name) >= 0, f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    check(0 < args.min_replay_capacity_fraction <= 1, "--min-replay-capacity-fraction must lie in (0, 1], got "
                                                      f"{args.min_replay_capacity_fraction}")
    skip = args.frame_skip
    check(args.total_frames >= skip * args.num_envs, f"--total-frames {args.total_frames} is less than one agent "
          f"step ({skip} frames) of each of the --num-envs {args.num_envs} environments: use at least "
          f"{skip * args.num_envs}")
    check(args.train_frequency % args.num_envs == 0 or args.num_envs % args.train_frequency == 0,
          f"--train-frequency {args.train_frequency} and --num-envs {args.num_envs}: one must divide the other")
    for name in (*PERIODS, "buffer_size", "learning_starts"):
        value = getattr(args, name)
        check(value % args.num_envs == 0, f"--{name.replace('_', '-')} {value} must be a multiple of --num-envs "
                                          f"{args.num_envs}: every period counts agent steps summed over the envs")
    check(args.total_frames // args.frame_skip % args.num_envs == 0,
          f"--total-frames / {args.frame_skip} must be a multiple of --num-envs")
    check(args.buffer_size // args.num_envs > args.batch_size + 8, f"--buffer-size {args.buffer_size} is too small "
          f"for the batch and --num-envs {args.num_envs}")
    check(args.learning_starts >= args.batch_size,
          "--min-replay-capacity-fraction x --buffer-size (the learning start) must lie in [--batch-size, capacity]")
    check(all(0 <= e <= 1 for e in (args.epsilon_start, args.epsilon_end, args.eval_epsilon)),
          "epsilons must lie in [0, 1]")
    check(args.eval_frames // args.frame_skip >= args.eval_envs, f"--eval-frames {args.eval_frames} gives fewer "
          f"agent steps than --eval-envs {args.eval_envs}: use at least {args.frame_skip * args.eval_envs} frames "
          "or fewer --eval-envs")
    check(not args.capture_video or args.preprocessing == "dqn_zoo",
          "--capture-video needs --preprocessing dqn_zoo (the gymnasium frames come grey from the emulator)")
    check(args.learning_rate > 0, f"--learning-rate must be positive, got {args.learning_rate}")
    check(args.hessian_iters <= 1_000, f"--hessian-iters must be at most 1,000, got {args.hessian_iters}: Lanczos "
          "re-orthogonalises each step against all earlier ones, so thousands take hours")


def train(args):
    """One run, or --num-seeds runs in lockstep (common.runtime.seeds): the seeds' networks are stacked, so that an
    update of every seed is one loss, one backward and one RMSProp step, while each seed keeps its own
    environments, replay, generators and run directory and equals its single run."""
    check_args(args)
    total_steps, num_envs = args.total_frames // args.frame_skip, args.num_envs
    huber_delta = args.batch_size * args.grad_error_bound
    runs = RunGroup(args, total="total_frames", total_steps=total_steps,
                    may_change=("capture_video", "save_model", "env_threads", "compile"))
    if runs.finished:
        return runs.summary()
    with runs.setting_up():
        device = select_device(args.cuda)
        envs, eval_envs, q_net, target_net, replays, rngs, records = runs.build(
            lambda seed: make_agent(args, seed, device), device)  # each part (seeds, ...) or one per seed
        optimizer = StackedOptimizer(RMSProp(q_net.parameters(), lr=args.learning_rate, decay=args.rmsprop_decay,
                                             eps=args.rmsprop_eps, centered=True), q_net)  # elementwise: one per seed
        samplers = runs.generators(device)  # replay sampling
        state = {"q_net": q_net, "target_net": target_net, "optimizer": optimizer, "replay": replays, "rng": rngs,
                 "sampler": samplers, "envs": envs, "state": records}  # what a checkpoint restores
        step = runs.resume(state, device)
        check(step is None or step <= total_steps, f"--total-frames {args.total_frames:,} is below the "
              f"{args.frame_skip * (step or 0):,} frames that {args.run_dir} has trained: a run cannot be shortened; "
              f"resume with --total-frames {args.frame_skip * (step or 0):,} or more")
    if step is None:
        step = 0
        for k, (env, replay) in enumerate(zip(envs, replays)):
            frames, records[k]["lives"] = env.reset()
            replay.start_episodes(frames)
    loss_fn = torch.compile(td_loss) if args.compile else td_loss  # compiles the forward and backward, not the step
    scores = {} if is_minatar(args.env_id) else load_atari_scores()  # MinAtar has no human scores
    game = game_name(args.env_id)
    runs.start(step)

    def record(seed, step, metrics):
        """Log a seed's metrics and keep their latest values for its summary.json."""
        row = seed.run.log(step, metrics)
        records[seed.index]["last"].update({key: value for key, value in row.items() if key != "step"})

    def measure(step):
        """Each seed's measurements and evaluation due at ``step`` and not made yet (``Run.measure``: a signal
        abandons the one under way, and the resumed run redoes it)."""
        learning = step >= args.learning_starts
        grad_cov = learning and args.grad_cov_every and step % args.grad_cov_every == 0
        hessian = learning and args.hessian_every and step % args.hessian_every == 0
        evaluation = step and (step % args.eval_every == 0 or step == total_steps)
        for seed in runs.live if grad_cov or hessian or evaluation else ():
            k, run = seed.index, seed.run
            q, target, sampler = q_net.modules[k], target_net.modules[k], samplers.generators[k]  # seed k's own
            with allowed_sync():  # periodic measurements: their results come to the host
                if grad_cov:
                    cov = run.measure("grad_cov", step, lambda: gradient_covariance(td_error_grads(
                        q, target, replays[k].sample(args.grad_cov_samples, sampler), args.gamma, huber_delta)), sampler)
                    if cov is not None:
                        records[k]["grad_cov"].append((step, cov.cpu().numpy()))
                        record(seed, step, {f"curvature/{key}": v for key, v in interference_summary(cov).items()})
                if hessian:
                    spectrum = run.measure("hessian", step, lambda: td_loss_hessian(
                        q, target, replays[k].sample(args.hessian_samples, sampler), args.gamma, huber_delta,
                        args.hessian_iters), sampler)
                    if spectrum is not None:
                        records[k]["hessian"].append((step, *spectrum))
                        record(seed, step, {"curvature/hessian_top_eigenvalue": spectrum[0][-1],
                                            "curvature/hessian_bottom_eigenvalue": spectrum[0][0]})
            if evaluation:
                video = os.path.join(run.run_dir, "videos", f"eval_{step}.mp4") if args.capture_video else None
                result = run.measure("evaluation", step, lambda: evaluate(q, eval_envs[k], args, seed.seed + step,
                                                                           device, video))
                if result is not None:
                    log_evaluation(seed, step, *result)

    def log_evaluation(seed, step, eval_return, episodes):
        if episodes:
            record(seed, step, {"eval/episodic_return": eval_return, "eval/episodes": episodes,
                                **({"eval/human_normalized_score": human_normalized(eval_return, game, scores)}
                                   if scores else {})})
            print(f"seed {seed.seed} step {step:,}: evaluation score {eval_return:.1f} over {episodes} episodes",
                  flush=True)
        else:  # the return of an unfinished episode is no score: the summary's final score is missing, not old
            record(seed, step, {"eval/episodes": 0})
            records[seed.index]["last"].pop("eval/episodic_return", None)
            records[seed.index]["last"].pop("eval/human_normalized_score", None)
            print(f"warning: seed {seed.seed} step {step:,}: no evaluation episode finished within --eval-frames "
                  f"{args.eval_frames:,}; no score logged", flush=True)

    loss = q_values = None
    start_time, start_step, last_print = time.time(), step, time.time()
    measure(step)  # what a signal abandoned before the checkpoint
    while step < total_steps and not runs.stopping:
        # Act: every seed's environments, its actions from one forward of all seeds.
        actions = act(q_net, replays, epsilon_at(step, args), rngs, envs[0].num_actions)
        step += num_envs
        for seed in runs.live:
            k, episodes = seed.index, records[seed.index]
            frames, rewards, terminated, truncated, lives = envs[k].step(actions[k])
            life_lost = lives < episodes["lives"]  # terminal for learning (DQN Zoo), not an episode end
            episodes["lives"] = lives
            clipped = np.clip(rewards, -args.max_abs_reward, args.max_abs_reward)
            replays[k].add(torch.as_tensor(actions[k], device=device), torch.as_tensor(clipped, device=device),
                           torch.as_tensor(terminated | life_lost, device=device), frames)
            episodes["episode_return"] += rewards
            episodes["episode_length"] += 1
            seed.steps = step
            done = np.flatnonzero(terminated | truncated)
            for i in done:
                record(seed, step, {"charts/episodic_return": float(episodes["episode_return"][i]),
                                    "charts/episodic_length": int(episodes["episode_length"][i])})
            if len(done):
                frames, episodes["lives"][done] = envs[k].reset(done)
                replays[k].start_episodes(frames, done)
                episodes["episode_return"][done], episodes["episode_length"][done] = 0.0, 0

        # Learn: one update per train_frequency agent steps, no host sync; the loss is checked when logged.
        for _ in range(step // args.train_frequency - (step - num_envs) // args.train_frequency):
            if step <= args.learning_starts:
                break
            batch = [stack_seeds(part) for part in zip(*(replay.sample(args.batch_size, sampler)
                                                         for replay, sampler in zip(replays, samplers)))]
            loss, q_values = loss_fn(q_net, target_net, batch, args.gamma, huber_delta)  # (seeds,), (seeds, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # the seeds share nothing: each gets exactly its own gradient
            optimizer.step()
        if step % args.target_network_frequency == 0:
            target_net.copy_from(q_net)

        if step % args.log_every == 0:
            sps = (step - start_step) / (time.time() - start_time)
            with allowed_sync():  # the log window's one sync
                losses = {} if loss is None else {"losses/td_loss": loss.detach().tolist(),
                                                  "losses/q_values": q_values.detach().mean(-1).tolist()}
            for seed in runs.live:
                record(seed, step, {"charts/SPS": sps, "charts/epsilon": epsilon_at(step, args),
                                    **{key: values[seed.index] for key, values in losses.items()}})
        if time.time() - last_print >= 30:  # progress at least every 30 s, whatever the speed
            last_print = time.time()
            print(f"step {step:,}/{total_steps:,}  {(step - start_step) / (last_print - start_time):.1f} steps/s  "
                  "episode return " + " ".join(f"{records[s.index]['last'].get('charts/episodic_return', np.nan):.1f}"
                                               for s in runs.live), flush=True)

        measure(step)
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            runs.save_checkpoint(step, state)

    def save_outputs(seed):
        run, title = seed.run, f"{game}, {'LayerNorm' if args.layer_norm else 'baseline'}"
        grad_cov, hessian = records[seed.index]["grad_cov"], records[seed.index]["hessian"]
        if grad_cov:
            run.save_figure(lambda: draw_grad_cov(grad_cov, f"{title}: gradient covariance C_k"), "grad_cov.png")
        if hessian:
            run.save_figure(lambda: draw_spectral_densities(hessian, f"{title}: TD-loss Hessian spectrum"),
                            "hessian_density.png")
        if args.save_model:
            torch.save(q_net.state_dict(seed.index), os.path.join(run.run_dir, f"{args.exp_name}.model"))

    return runs.finish(step, state, save_outputs, final_metrics=lambda seed: records[seed.index]["last"],
                       extra=lambda seed: dict(env_id=args.env_id, layer_norm=args.layer_norm, seed=seed.seed,
                                               frames=seed.steps * args.frame_skip))


# ---------------------------------------------------------------------------------------------------- aggregation
def aggregate(args):
    """Fig 7 (top), Wang et al. (2016)'s per-game improvement of LayerNorm over the baseline, and rliable's
    aggregates of human-normalised scores (IQM, median, mean, optimality gap, probability of improvement,
    performance profiles) with stratified bootstrap 95% intervals; figures and CSV files in --output-dir."""
    from common.analysis.atari_stats import aggregate_runs  # rliable is needed only here, not to train

    return aggregate_runs(args.runs_dir, args.output_dir, args.num_boot, args.num_boot_profile, args.seed)


if __name__ == "__main__":
    if sys.argv[1:2] == ["aggregate"]:  # python ddqn_atari_layernorm.py aggregate --runs-dir runs
        del sys.argv[1]
        main(aggregate, AggregateArgs, stopped="before aggregate wrote its outputs (the earlier ones are unchanged): "
                                                "run the same command again")
    else:
        main(train, Args)
