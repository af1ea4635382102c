"""Double DQN on the Arcade Learning Environment, with and without LayerNorm (Lyle et al. 2023, Sec 6.3, A.3).

The protocol is DQN Zoo's tuned double_q agent (Quan & Ostrovski 2020) with the paper's two deviations (replay
capacity 100,000, training epsilon 0.1) and LayerNorm after each hidden layer (`--layer-norm`, the default;
`--no-layer-norm` is the baseline). Every `--grad-cov-every` agent steps it records the gradient covariance of a
sampled batch (eq. 3; Fig 7 bottom, 19-20).

    python ddqn_atari_layernorm.py --env-id ALE/Breakout-v5                    # one run
    python ddqn_atari_layernorm.py aggregate --runs-dir runs                    # Fig 7 (top) over many runs

Step counts are agent steps (4 frames each) unless the name says frames. SIGTERM or SIGUSR1 (Slurm preemption)
writes `checkpoint.pt` and exits; `--resume` continues exactly where the run stopped.
"""
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.atari import (FrameReplay, check_env_id, env_state, game_name, human_normalized,
                          load_atari_scores, make_env, restore_env_state, write_video)
from common.cli import main, select_device, seed_everything
from common.errors import check
from common.grad_cov import gradient_covariance, interference, per_example_grads
from common.hessian import hessian_matvec, lanczos
from common.optim import RMSProp
from common.plots import draw_grad_cov, draw_spectral_densities
from common.run import Interrupted, Run


@dataclass
class Args:
    exp_name: str = "ddqn_atari_layernorm"
    """name of the experiment (CleanRL)"""
    seed: int = 1
    """seed of the run (DQN Zoo default 1)"""
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
    minimal action set; gym_atari.py); common.atari.atari_env_ids() maps the 57 games to their ids"""
    preprocessing: Literal["dqn_zoo", "gymnasium"] = "dqn_zoo"
    """frames and stacks as DQN Zoo's processors.atari (max of the last two RGB frames, luminance, bilinear 84x84,
    zero-padded first stacks) or as gymnasium's AtariPreprocessing (ALE grey, INTER_AREA, first-frame padding)"""
    total_frames: int = 200_000_000
    """environment frames of training (A.3: 200M)"""
    layer_norm: bool = True
    """LayerNorm after each hidden layer (Sec 6.3); --no-layer-norm is the DQN Zoo baseline"""
    channels_last: bool = True
    """channels_last CNN (2x faster per update reported on an idle 2-core CPU; no gain measured at 1 thread)"""

    buffer_size: int = 100_000
    """replay capacity in frames, about one transition each (A.3: 100,000; DQN Zoo uses 1M)"""
    min_replay_capacity_fraction: float = 0.05
    """learning starts once the replay holds this fraction of its capacity; uniformly random actions until then
    (DQN Zoo double_q/run_atari.py and agent.py: 0.05, so 5,000 transitions at the paper's capacity)"""
    batch_size: int = 32
    """transitions per update (DQN Zoo)"""
    train_frequency: int = 4
    """agent steps per update (DQN Zoo learn_period: 16 frames)"""
    target_network_frequency: int = 30_000
    """agent steps between target updates (DQN Zoo double_q: 120k frames)"""
    gamma: float = 0.99
    """discount (DQN Zoo additional_discount)"""
    learning_rate: float = 2.5e-4
    """RMSProp learning rate (DQN Zoo)"""
    rmsprop_decay: float = 0.95
    """RMSProp decay (DQN Zoo)"""
    rmsprop_eps: float = 0.01 / 32**2
    """RMSProp epsilon inside the square root, centered (DQN Zoo optimizer_epsilon = 0.01 / 32**2)"""
    grad_error_bound: float = 1.0 / 32
    """bound on the TD-error gradient under the batch mean (DQN Zoo grad_error_bound)"""
    max_abs_reward: float = 1.0
    """reward clipping (DQN Zoo max_abs_reward)"""
    epsilon_start: float = 0.1
    """training epsilon when learning starts, the start of its decay (A.3: fixed 0.1; DQN Zoo: 1.0)"""
    epsilon_end: float = 0.1
    """training epsilon after the decay (A.3: fixed 0.1; DQN Zoo: 0.01)"""
    epsilon_decay_steps: int = 1_000_000
    """agent steps of the linear decay, from learning_starts (DQN Zoo: 2% of 200M frames)"""

    noop_max: int = 30
    """up to this many no-op actions at each reset (DQN Zoo: 1 to 30)"""
    max_episode_frames: int = 108_000
    """episode cap in frames, 30 minutes (DQN Zoo), reached as a truncation"""
    eval_every: int = 250_000
    """agent steps between evaluations (DQN Zoo: one iteration of 1M frames)"""
    eval_frames: int = 500_000
    """frames per evaluation (DQN Zoo num_eval_frames)"""
    eval_epsilon: float = 0.01
    """evaluation epsilon (DQN Zoo double_q)"""
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
    checkpoint_every: int = 0
    """agent steps between checkpoints; 0 writes one only at the end and on SIGTERM/SIGUSR1/SIGINT"""
    resume: bool = False
    """continue the run in --run-dir from its checkpoint.pt"""

    @property
    def learning_starts(self):
        """Agent steps (one transition each) of uniformly random warm-up before learning."""
        return int(self.min_replay_capacity_fraction * self.buffer_size)


@dataclass
class AggregateArgs:
    runs_dir: str = "runs"
    """folder holding run directories (each with args.json and summary.json)"""
    output_dir: str | None = None
    """folder for the figures and their CSV files; default --runs-dir (one protocol-<n> folder per protocol)"""
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
    over (C, H, W) copies to contiguous and ran 2-7x slower here). Weights and biases, the shared bias included, start
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
        x = frames.float().div_(255.0).contiguous(memory_format=self.memory_format)
        return self.head(self.torso(x)) + self.shared_bias


# ---------------------------------------------------------------------------------------------------- learning
def double_q_targets(rewards, terminals, gamma, next_q_online, next_q_target):
    """r + gamma (1 - terminal) Q_target(s', argmax_a Q_online(s', a)) (van Hasselt et al. 2016)."""
    best_actions = next_q_online.argmax(dim=1, keepdim=True)
    return rewards + gamma * (1.0 - terminals) * next_q_target.gather(1, best_actions).squeeze(1)


@torch.no_grad()
def batch_targets(q_net, target_net, batch, gamma):
    _, _, rewards, terminals, next_obs = batch
    return double_q_targets(rewards, terminals, gamma, q_net(next_obs), target_net(next_obs))


def td_loss(q_net, target_net, batch, gamma, huber_delta):
    """Mean Huber loss of the double-Q TD errors. DQN Zoo clips the gradient of each TD error under the batch mean
    of 0.5 td^2 to +-grad_error_bound; that is exactly the gradient of a mean Huber loss with delta
    batch_size * grad_error_bound (1 at batch 32)."""
    obs, actions = batch[:2]
    targets = batch_targets(q_net, target_net, batch, gamma)
    q_values = q_net(obs).gather(1, actions[:, None]).squeeze(1)
    return F.huber_loss(q_values, targets, delta=huber_delta), q_values


def td_error_grads(q_net, target_net, batch, gamma, huber_delta):
    """(k, d) gradients of each transition's TD loss (one vmap over the batch, common.grad_cov)."""
    obs, actions = batch[:2]
    targets = batch_targets(q_net, target_net, batch, gamma)
    action_masks = F.one_hot(actions, q_net.head.out_features).float()  # no integer indexing inside vmap

    def loss(q_values, action_mask, target):
        return F.huber_loss((q_values * action_mask).sum(1), target, delta=huber_delta)

    memory_format, q_net.memory_format = q_net.memory_format, torch.contiguous_format  # vmap lacks channels_last
    try:
        return per_example_grads(q_net, loss, obs, action_masks, targets)
    finally:
        q_net.memory_format = memory_format


def td_loss_hessian(q_net, target_net, batch, gamma, huber_delta, num_iters):
    """Lanczos nodes and weights of the Hessian of the TD loss on one batch (Fig 21-22, common.hessian)."""
    matvec, dim = hessian_matvec(lambda: td_loss(q_net, target_net, batch, gamma, huber_delta)[0],
                                 list(q_net.parameters()))
    return lanczos(matvec, dim, min(num_iters, dim))


def grad_cov_summary(cov):
    """Fig 7 (bottom), 19-20: how much the transitions' gradients interfere (Sec 2.1)."""
    off_diagonal = cov[~torch.eye(len(cov), dtype=torch.bool, device=cov.device)]
    neg_fraction, neg_mean = interference(cov)
    return {"curvature/grad_cov_offdiag_mean": off_diagonal.nanmean(), "curvature/grad_cov_neg_fraction": neg_fraction,
            "curvature/grad_cov_neg_mean": neg_mean}


def epsilon_at(step, args):
    """1 (uniformly random actions) before learning starts, then a linear decay from epsilon_start to epsilon_end
    over epsilon_decay_steps (DQN Zoo's parts.LinearSchedule, which returns its begin value 1.0 before begin_t =
    the learning start); constant 0.1 after the warm-up with the paper's defaults."""
    if step < args.learning_starts:
        return 1.0
    fraction = min((step - args.learning_starts) / max(args.epsilon_decay_steps, 1), 1.0)
    return args.epsilon_start + fraction * (args.epsilon_end - args.epsilon_start)


# ---------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(q_net, env, args, seed, device, video_path=None):
    """Epsilon-greedy episodes (epsilon 0.01) for eval_frames frames on a separate environment. Returns the mean
    return of the episodes completed within the budget, as DQN Zoo reports it (the unfinished episode's return if
    none completed), and how many completed. Stacks come from a small FrameReplay, padded as the training ones."""
    rng = np.random.default_rng(seed)
    stacks = FrameReplay(8, zero_pad=args.preprocessing == "dqn_zoo", device=device)
    stacks.start_episode(env.reset(seed=seed)[0])
    returns, episode_return, video = [], 0.0, [] if video_path else None
    for _ in range(args.eval_frames // 4):
        if rng.random() < args.eval_epsilon:
            action = int(rng.integers(env.action_space.n))
        else:
            action = int(q_net(stacks.latest()).argmax())
        frame, reward, terminated, truncated, _ = env.step(action)
        episode_return += reward
        if video is not None:
            video.append(env.render())
        if terminated or truncated:
            returns.append(episode_return)
            if video is not None:  # the first episode only
                write_video(video, video_path)
                video = None
            stacks.start_episode(env.reset()[0])
            episode_return = 0.0
        else:
            stacks.add(action, 0.0, False, frame)
    if video:  # the first episode did not finish
        write_video(video, video_path)
    return float(np.mean(returns)) if returns else episode_return, len(returns)


# ---------------------------------------------------------------------------------------------------- training
def check_args(args):
    check_env_id(args.env_id)
    for name in ("total_frames", "buffer_size", "batch_size", "train_frequency", "target_network_frequency",
                 "eval_every", "eval_frames", "log_every", "max_episode_frames", "grad_cov_samples",
                 "hessian_samples", "hessian_iters"):
        check(getattr(args, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("checkpoint_every", "grad_cov_every", "hessian_every", "noop_max"):
        check(getattr(args, name) >= 0, f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    check(args.buffer_size > args.batch_size + 8, f"--buffer-size {args.buffer_size} is too small for the batch")
    check(0 < args.min_replay_capacity_fraction <= 1 and args.learning_starts >= args.batch_size,
          "--min-replay-capacity-fraction x --buffer-size (the learning start) must lie in [--batch-size, capacity]")
    check(all(0 <= e <= 1 for e in (args.epsilon_start, args.epsilon_end, args.eval_epsilon)),
          "epsilons must lie in [0, 1]")
    check(args.learning_rate > 0, f"--learning-rate must be positive, got {args.learning_rate}")
    check(args.hessian_iters <= 1_000, f"--hessian-iters must be at most 1,000, got {args.hessian_iters}: Lanczos "
          "re-orthogonalises each step against all earlier ones, so thousands take hours")


def train(args):
    check_args(args)
    run = Run(args, total="total_frames", may_change=("capture_video", "save_model"))
    if run.finished:
        return run.finished
    device = select_device(args.cuda)
    seed_everything(args.seed)
    total_steps = args.total_frames // 4
    huber_delta = args.batch_size * args.grad_error_bound

    env = make_env(args.env_id, args.noop_max, args.max_episode_frames, args.preprocessing)
    eval_env = make_env(args.env_id, args.noop_max, args.max_episode_frames, args.preprocessing, args.capture_video)
    num_actions = env.action_space.n
    q_net = QNetwork(num_actions, args.layer_norm, args.channels_last).to(device)
    target_net = QNetwork(num_actions, args.layer_norm, args.channels_last).to(device)
    target_net.load_state_dict(q_net.state_dict())
    optimizer = RMSProp(q_net.parameters(), lr=args.learning_rate, decay=args.rmsprop_decay, eps=args.rmsprop_eps,
                        centered=True)
    replay = FrameReplay(args.buffer_size, zero_pad=args.preprocessing == "dqn_zoo", device=device)
    rng = np.random.default_rng(args.seed)  # exploration
    sampler = torch.Generator(device=device).manual_seed(args.seed)  # replay sampling
    scores = load_atari_scores()
    game = game_name(args.env_id)

    # Counters and everything else a checkpoint must restore.
    state = {"step": 0, "episode_return": 0.0, "episode_length": 0, "lives": 0, "grad_cov": [], "hessian": [],
             "eval_step": 0, "last": {}}
    ckpt = run.load_checkpoint(device)
    if ckpt:
        q_net.load_state_dict(ckpt["q_net"])
        target_net.load_state_dict(ckpt["target_net"])
        optimizer.load_state_dict(ckpt["optimizer"])
        replay.load_state_dict(ckpt["replay"])
        rng.bit_generator.state = ckpt["rng"]
        sampler.set_state(ckpt["sampler"].cpu())
        env.reset(seed=args.seed)
        restore_env_state(env, ckpt["env"])
        state = ckpt["state"]
    else:
        frame, info = env.reset(seed=args.seed)
        replay.start_episode(frame)
        state["lives"] = info["lives"]

    def save_checkpoint():
        run.save_checkpoint({"q_net": q_net.state_dict(), "target_net": target_net.state_dict(),
                             "optimizer": optimizer.state_dict(), "replay": replay.state_dict(),
                             "rng": rng.bit_generator.state, "sampler": sampler.get_state(), "env": env_state(env),
                             "state": state}, state["step"])

    run.start(state["step"])

    def record(step, metrics):
        """Log metrics and keep their latest values for summary.json."""
        row = run.log(step, metrics)
        state["last"].update({key: value for key, value in row.items() if key != "step"})
        return row

    def due(step):
        """The measurements and the evaluation due at ``step`` and not yet made (a signal abandons them)."""
        learning = step >= args.learning_starts
        return [name for name, every, done in (
            ("grad_cov", args.grad_cov_every, state["grad_cov"][-1][0] if state["grad_cov"] else -1),
            ("hessian", args.hessian_every, state["hessian"][-1][0] if state["hessian"] else -1),
            ("eval", args.eval_every, state["eval_step"]))
            if step > done and ((every and step % every == 0 and (learning or name == "eval"))
                                or (name == "eval" and step == total_steps))]

    def grad_cov_snapshot(step):
        with run.measurement(sampler):
            batch = replay.sample(args.grad_cov_samples, sampler)
            cov = gradient_covariance(td_error_grads(q_net, target_net, batch, args.gamma, huber_delta))
        state["grad_cov"].append((step, cov.cpu().numpy()))
        record(step, grad_cov_summary(cov))

    def hessian_snapshot(step):
        with run.measurement(sampler):
            batch = replay.sample(args.hessian_samples, sampler)
            nodes, weights = td_loss_hessian(q_net, target_net, batch, args.gamma, huber_delta, args.hessian_iters)
        state["hessian"].append((step, nodes, weights))
        record(step, {"curvature/hessian_top_eigenvalue": nodes[-1], "curvature/hessian_bottom_eigenvalue": nodes[0]})

    def evaluation(step):
        with run.measurement():
            video = os.path.join(run.run_dir, "videos", f"eval_{step}.mp4") if args.capture_video else None
            eval_return, episodes = evaluate(q_net, eval_env, args, args.seed + step, device, video)
        state["eval_step"] = step
        if episodes:
            record(step, {"eval/episodic_return": eval_return, "eval/episodes": episodes,
                          "eval/human_normalized_score": human_normalized(eval_return, game, scores)})
            print(f"step {step:,}: evaluation score {eval_return:.1f} over {episodes} episodes", flush=True)
        else:  # the return of an unfinished episode is no score
            record(step, {"eval/episodes": 0})
            print(f"warning: step {step:,}: no evaluation episode finished within --eval-frames {args.eval_frames:,}; "
                  f"no score logged", flush=True)

    def measure(step):
        """What is due at ``step``; a signal abandons it at once (Interrupted), and the resumed run redoes it."""
        for name in due(step):
            {"grad_cov": grad_cov_snapshot, "hessian": hessian_snapshot, "eval": evaluation}[name](step)

    loss = q_values = None
    start_time, start_step, last_print = time.time(), state["step"], time.time()
    try:
        if state["step"] > 0:
            measure(state["step"])  # what a signal abandoned before the checkpoint
        while state["step"] < total_steps and not run.stopping:
            step = state["step"]

            # Act: one host sync per step (the emulator needs the action).
            if rng.random() < epsilon_at(step, args):
                action = int(rng.integers(num_actions))
            else:
                with torch.no_grad():
                    action = int(q_net(replay.latest()).argmax())
            frame, reward, terminated, truncated, info = env.step(action)
            life_lost = info["lives"] < state["lives"]  # terminal for learning (DQN Zoo), not an episode end
            state["lives"] = info["lives"]
            replay.add(action, float(np.clip(reward, -args.max_abs_reward, args.max_abs_reward)),
                       terminated or life_lost, frame)
            state["episode_return"] += reward
            state["episode_length"] += 1
            state["step"] = step = step + 1
            if terminated or truncated:
                record(step, {"charts/episodic_return": state["episode_return"],
                              "charts/episodic_length": state["episode_length"]})
                frame, info = env.reset()
                replay.start_episode(frame)
                state.update(episode_return=0.0, episode_length=0, lives=info["lives"])

            # Learn: no host sync here; the loss is checked for non-finite values when logged.
            if step > args.learning_starts and step % args.train_frequency == 0:
                batch = replay.sample(args.batch_size, sampler)
                loss, q_values = td_loss(q_net, target_net, batch, args.gamma, huber_delta)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if step % args.target_network_frequency == 0:
                target_net.load_state_dict(q_net.state_dict())

            if step % args.log_every == 0:
                sps = (step - start_step) / (time.time() - start_time)
                metrics = {"charts/SPS": sps, "charts/epsilon": epsilon_at(step, args)}
                if loss is not None:  # learning has started (in this process)
                    metrics.update({"losses/td_loss": loss, "losses/q_values": q_values.mean()})
                record(step, metrics)
            if time.time() - last_print >= 30:  # progress at least every 30 s, whatever the speed
                last_print = time.time()
                print(f"step {step:,}/{total_steps:,}  {(step - start_step) / (last_print - start_time):.1f} steps/s  "
                      f"episode return {state['last'].get('charts/episodic_return', float('nan')):.1f}", flush=True)

            if not run.stopping:
                measure(step)
            if args.checkpoint_every and step % args.checkpoint_every == 0 and not run.stopping:
                save_checkpoint()
    except Interrupted:
        pass  # a measurement or evaluation was abandoned: the checkpoint below says it is still due
    if not run.diverged:
        save_checkpoint()  # also after completion: a raised --total-frames continues from here

    title = f"{game}, {'LayerNorm' if args.layer_norm else 'baseline'}"
    if state["grad_cov"]:
        run.save_figure(lambda: draw_grad_cov(state["grad_cov"], f"{title}: gradient covariance C_k"), "grad_cov.png")
    if state["hessian"]:
        run.save_figure(lambda: draw_spectral_densities(state["hessian"], f"{title}: TD-loss Hessian spectrum"),
                        "hessian_density.png")
    if args.save_model:
        torch.save(q_net.state_dict(), os.path.join(run.run_dir, f"{args.exp_name}.model"))
    return run.finish(state["step"], done=state["step"] >= total_steps and not due(state["step"]),
                      metrics=state["last"], env_id=args.env_id, layer_norm=args.layer_norm, seed=args.seed,
                      frames=state["step"] * 4)


# ---------------------------------------------------------------------------------------------------- aggregation
def aggregate(args):
    """Fig 7 (top), Wang et al. (2016)'s per-game improvement of LayerNorm over the baseline, and rliable's
    aggregates of human-normalised scores (IQM, median, mean, optimality gap, probability of improvement,
    performance profiles) with stratified bootstrap 95% intervals; figures and CSV files in --output-dir."""
    from common.atari_stats import aggregate_runs  # rliable is needed only here, not to train

    return aggregate_runs(args.runs_dir, args.output_dir, args.num_boot, args.num_boot_profile, args.seed)


if __name__ == "__main__":
    if sys.argv[1:2] == ["aggregate"]:  # python ddqn_atari_layernorm.py aggregate --runs-dir runs
        del sys.argv[1]
        main(aggregate, AggregateArgs)
    else:
        main(train, Args)
