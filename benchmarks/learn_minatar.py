"""Evidence that the MinAtar agent learns, and that a broken target or replay would not: Double DQN with LayerNorm
on MinAtar/Breakout-v1 for --total-frames agent steps, one update per --train-frequency steps (Young & Tian's
defaults otherwise), then its final
evaluation (epsilon 0.01) against the random policy's score (common/science/minatar_scores.csv). Exit status 1 when the
final evaluation does not beat the random score by --margin.

    OMP_NUM_THREADS=1 python benchmarks/learn_minatar.py                   # the agent as shipped: passes
    OMP_NUM_THREADS=1 python benchmarks/learn_minatar.py --bug target      # bootstraps from s, not s': fails
    OMP_NUM_THREADS=1 python benchmarks/learn_minatar.py --bug replay      # actions shuffled in each batch: fails

--bug plants the fault by replacing one function of the shipped agent; nothing else changes.
"""
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Literal

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ddqn_atari_layernorm as ddqn  # noqa: E402
from common.science.atari import FrameReplay  # noqa: E402
from common.science.minatar import load_random_scores  # noqa: E402


@dataclass
class Check:
    bug: Literal["none", "target", "replay"] = "none"
    """the fault to plant: none; target (the Double-Q target bootstraps from the state s instead of s'); replay
    (each sampled batch's actions are shuffled, so they no longer belong to their transitions)"""
    seed: int = 7
    """the agent's seed (the test suite uses others)"""
    total_frames: int = 30_000
    """agent steps of training (learning starts after 5,000)"""
    train_frequency: int = 4
    """agent steps per update: 4 (as the CPU grid of the README) rather than dqn.py's 1, for a check of minutes"""
    margin: float = 1.0
    """how far the final evaluation must lie above the random policy's score"""
    layer_norm: bool = True
    """LayerNorm (Sec 6.3) or the baseline"""


def plant(bug):
    if bug == "target":
        batch_targets = ddqn.batch_targets
        ddqn.batch_targets = lambda q_net, target_net, batch, gamma: batch_targets(
            q_net, target_net, (*batch[:4], batch[0]), gamma)
    elif bug == "replay":
        sample = FrameReplay.sample

        def shuffled(self, batch_size, generator=None):
            obs, actions, rewards, terminals, next_obs = sample(self, batch_size, generator)
            return obs, actions[torch.randperm(len(actions), generator=generator)], rewards, terminals, next_obs

        FrameReplay.sample = shuffled


def main(check):
    plant(check.bug)
    run_dir = tempfile.mkdtemp(prefix="learn_minatar_")
    args = ddqn.Args(env_id="MinAtar/Breakout-v1", seed=check.seed, total_frames=check.total_frames,
                     train_frequency=check.train_frequency,
                     layer_norm=check.layer_norm, eval_every=check.total_frames, eval_frames=10_000,
                     grad_cov_every=0, hessian_every=0, checkpoint_every=0, cuda=False, run_dir=run_dir)
    summary = ddqn.train(args)
    score, random_score = summary["metrics"]["eval/episodic_return"], load_random_scores()["Breakout"]
    passed = score > random_score + check.margin
    print(f"bug={check.bug} seed={check.seed} steps={check.total_frames:,}: final evaluation {score:.2f}, random "
          f"policy {random_score:.2f}, margin {check.margin}: {'PASS' if passed else 'FAIL'} ({run_dir})")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main(tyro.cli(Check))
