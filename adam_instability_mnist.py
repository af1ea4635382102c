"""Sec 4.1, A.1, Fig 1: optimizer instability under non-stationarity.

An MLP memorises random labels of a fixed subset of MNIST images. After a fixed budget of steps the labels are
re-randomised (the inputs stay fixed) and training continues from the current parameters. Default Adam
(b2 = 0.999, eps_root = 0) takes huge steps just after each reset, because m_hat reacts to the new, large
gradients faster than v_hat does; this kills most ReLU units and accuracy collapses. Tuned Adam (b2 = 0.9,
eps_root = 1e-3, eq. 6) keeps memorising new labellings for much longer.

`--optimizer both` trains the two optimizers in lockstep from the same initial parameters on the same labels and
batches, so the comparison is paired.
"""
if __name__ == "__main__":  # a signal while the libraries below import ends the process with 75, as one later does
    from common.runtime import early_signals

    early_signals.install()

import copy
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import check
from common.runtime.cli import main, select_device
from common.runtime.logger import pyplot
from common.runtime.run import Run, seed_everything
from common.science.classification import NUM_CLASSES, load_dataset, random_relabel
from common.science.optim import Adam
from common.science.stats import dead_fractions

# A.1: both share lr 1e-3, b1 0.9, eps 1e-9; the tuned one decays v faster and adds eps_root inside the root.
ADAM_CONFIGS = {
    "default": dict(betas=(0.9, 0.999), eps=1e-9, eps_root=0.0),
    "tuned": dict(betas=(0.9, 0.9), eps=1e-9, eps_root=1e-3),
}


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment: the script's file name (CleanRL)"""
    seed: int = 1
    """seed of the subset, the initial parameters, the labellings and the batches"""
    cuda: bool = True
    """use the GPU when there is one (falls back to the CPU)"""
    track: bool = False
    """log to Weights and Biases as well (CleanRL)"""
    run_dir: Optional[str] = None
    """where the run directory goes (default: runs/<exp_name>__<seed>__<time>)"""
    resume: bool = False
    """continue the run in --run-dir from its checkpoint.pt (written after every iteration)"""
    data_dir: str = os.environ.get("PLASTICITY_DATA_DIR", "data")
    """folder holding MNIST in torchvision's layout (MNIST/raw)"""
    optimizer: str = "both"
    """default | tuned | both: which Adam of A.1 to train; both trains the two in lockstep on the same data"""
    num_images: int = 5000
    """size of the fixed MNIST subset to memorise (A.1)"""
    width: int = 1024
    """width of each of the two hidden ReLU layers (A.1)"""
    learning_rate: float = 1e-3
    """Adam's learning rate (A.1)"""
    batch_size: int = 128
    """minibatch size (not given in the paper; a common choice)"""
    steps_per_iteration: int = 10_000
    """optimizer steps per labelling (not given in the paper; tuned Adam's damped steps need thousands)"""
    num_iterations: int = 30
    """number of labellings (not given in the paper; default Adam collapsed within 4 in the reduced CPU run)"""
    eval_size: int = 4096
    """inputs on which accuracy and dead units are measured at the end of each iteration (A.1; all if fewer)"""
    stats_window: int = 10
    """steps after each label reset over which the Adam statistics are maximised (the mechanism of Sec 4.1)"""


def make_mlp(width, in_features=28 * 28):
    """Two hidden ReLU layers of ``width`` (A.1)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, NUM_CLASSES))


def relabel(inputs, labels, seed):
    """A new random labelling of the same inputs: ``(inputs, new_labels)``."""
    return inputs, random_relabel(labels, NUM_CLASSES, seed=seed)


@torch.no_grad()
def evaluate(model, inputs, labels):
    """Accuracy, loss, and per hidden layer the fraction of dead ReLUs (never positive on any of ``inputs``)."""
    logits = model(inputs)
    accuracy = (logits.argmax(dim=1) == labels).float().mean()
    return accuracy, F.cross_entropy(logits, labels), dead_fractions(model, inputs)


@torch.no_grad()
def adam_step_stats(optimizer):
    """Size of the step Adam just took: ``r = m_hat / (sqrt(v_hat + eps_root) + eps)`` over all parameters.

    Returns ``(||lr * r||, max |r|)``. When gradients jump from about 0 (a memorised labelling) to g (a new one),
    k steps later ``|r|`` is about ``(1 - b1^k) / sqrt(1 - b2^k)``: up to 6.5 (k = 12) with b2 = 0.999, at most
    1 with b2 = 0.9, and eps_root shrinks it further while gradients are small.
    """
    sq_norms, max_ratios = [], []
    for group in optimizer.param_groups:
        (b1, b2), eps, eps_root = group["betas"], group["eps"], group["eps_root"]
        for p in group["params"]:
            state = optimizer.state[p]
            t = state["step"]
            m_hat, v_hat = state["exp_avg"] / (1 - b1**t), state["exp_avg_sq"] / (1 - b2**t)
            ratio = m_hat / ((v_hat + eps_root).sqrt() + eps)
            sq_norms.append((group["lr"] * ratio).square().sum())
            max_ratios.append(ratio.abs().max())
    return torch.stack(sq_norms).sum().sqrt(), torch.stack(max_ratios).max()


class Learner:
    """One network with its optimizer, and the per-iteration statistics accumulated on the device."""

    def __init__(self, name, model, lr):
        self.name, self.model = name, model
        self.optimizer = Adam(model.parameters(), lr=lr, **ADAM_CONFIGS[name])
        self.history = []

    def start_iteration(self, device):
        zero = torch.zeros((), device=device)
        self.loss_sum, self.update_norm_after_reset, self.max_ratio_after_reset = zero, zero, zero

    def train_step(self, x, y, measure_after_reset, measure_final):
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum = self.loss_sum + loss.detach()
        if measure_after_reset or measure_final:
            update_norm, max_ratio = adam_step_stats(self.optimizer)
            if measure_after_reset:
                self.update_norm_after_reset = torch.maximum(self.update_norm_after_reset, update_norm)
                self.max_ratio_after_reset = torch.maximum(self.max_ratio_after_reset, max_ratio)
            if measure_final:
                self.update_norm, self.max_ratio = update_norm, max_ratio

    def end_iteration(self, eval_inputs, eval_labels, steps):
        accuracy, loss, dead = evaluate(self.model, eval_inputs, eval_labels)
        metrics = {"charts/accuracy": accuracy, "losses/loss": loss}
        metrics.update({f"stats/dead_fraction_layer{i + 1}": d for i, d in enumerate(dead)})
        if steps > 0:
            metrics.update({"losses/train_loss_mean": self.loss_sum / steps,
                            "adam/update_norm_after_reset": self.update_norm_after_reset,
                            "adam/max_ratio_after_reset": self.max_ratio_after_reset,
                            "adam/update_norm": self.update_norm, "adam/max_ratio": self.max_ratio})
        # the only host syncs: once per iteration
        metrics = {f"{key}/{self.name}": float(value) for key, value in metrics.items()}
        self.history.append(metrics)
        return metrics


def check_args(args):
    check(args.optimizer in ("default", "tuned", "both"),
          f"--optimizer {args.optimizer!r} is not one of default, tuned, both")
    for name in ("num_images", "width", "batch_size", "steps_per_iteration", "num_iterations", "eval_size"):
        check(getattr(args, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    check(args.num_images <= 60_000, f"--num-images must be at most 60000 (MNIST's train set), got {args.num_images}")
    check(args.learning_rate > 0, f"--learning-rate must be positive, got {args.learning_rate}")
    check(args.stats_window >= 0, f"--stats-window must be non-negative, got {args.stats_window}")


def plot_fig1(learners):
    """Fig 1: accuracy per iteration, dead ReLU fraction per layer, and Adam's largest step just after each reset."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = {"default": "tab:red", "tuned": "tab:blue"}
    for learner in learners:
        name, history, c = learner.name, learner.history, colors[learner.name]
        iterations = range(len(history))
        axes[0].plot(iterations, [h[f"charts/accuracy/{name}"] for h in history], "o-", color=c, label=f"{name} Adam")
        for layer, style in ((1, "-"), (2, "--")):
            axes[1].plot(iterations, [h[f"stats/dead_fraction_layer{layer}/{name}"] for h in history], style,
                         color=c, label=f"{name} Adam, layer {layer}")
        axes[2].semilogy(iterations[1:], [h[f"adam/max_ratio_after_reset/{name}"] for h in history[1:]], "o-",
                         color=c, label=f"{name} Adam")
    axes[0].set(xlabel="iteration (labelling)", ylabel="training accuracy", ylim=(0, 1.02),
                title="Memorising random labels")
    axes[1].set(xlabel="iteration (labelling)", ylabel="fraction of dead ReLUs", ylim=(-0.02, 1.02),
                title="Dead units (never active on the sample)")
    axes[2].set(xlabel="iteration (labelling)", ylabel="max |m_hat| / sqrt(v_hat + eps_root)",
                title="Largest step ratio just after the reset")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def zip_histories(learners):
    """Per iteration, the metrics of every learner in one dict."""
    return [{k: v for h in rows for k, v in h.items()} for rows in zip(*(l.history for l in learners))]


def train(args):
    check_args(args)
    run = Run(args, total="num_iterations")
    if run.finished:
        return run.finished
    seed_everything(args.seed)
    device = select_device(args.cuda)

    images, labels = load_dataset("mnist", args.data_dir, train=True, device=device)
    subset = torch.randperm(len(images), device=device)[: args.num_images]
    inputs = images[subset].flatten(1).float() / 255.0  # a small subset: keep it as float on the device
    labels = labels[subset]
    eval_rows = torch.randperm(args.num_images, device=device)[: args.eval_size]  # A.1's sample of 4,096 inputs

    model = make_mlp(args.width).to(device)
    names = ["default", "tuned"] if args.optimizer == "both" else [args.optimizer]
    learners = [Learner(name, copy.deepcopy(model), args.learning_rate) for name in names]  # same initial params
    batch_generator = torch.Generator(device=device).manual_seed(args.seed)
    iteration, row = 0, {}
    ckpt = run.load_checkpoint(device)
    if ckpt:
        for learner, saved in zip(learners, ckpt["learners"]):
            learner.model.load_state_dict(saved["model"])
            learner.optimizer.load_state_dict(saved["optimizer"])
            learner.history = saved["history"]
        batch_generator.set_state(ckpt["batch_generator"].cpu())
        iteration, row = ckpt["iteration"], ckpt["row"]
    run.start(iteration * args.steps_per_iteration)

    def log_iteration(iteration, steps, **extra):
        row = {"charts/iteration": iteration, **extra}
        for learner in learners:
            row.update(learner.end_iteration(inputs[eval_rows], labels[eval_rows], steps))
        run.log(iteration * args.steps_per_iteration, row)
        return row

    def save_checkpoint():
        """After a whole iteration: a signal abandons the iteration under way, which is redone after resume."""
        learner_states = [{"model": l.model.state_dict(), "optimizer": l.optimizer.state_dict(),
                           "history": l.history} for l in learners]
        run.save_checkpoint({"learners": learner_states, "batch_generator": batch_generator.get_state(),
                             "iteration": iteration, "row": row}, iteration * args.steps_per_iteration)

    if not ckpt:
        row = log_iteration(0, steps=0)  # the initial network, before any training
        save_checkpoint()
    segment_start, segment_steps = time.time(), 0
    while iteration < args.num_iterations and not run.stopping:
        # a fresh labelling per iteration, reproducible from (seed, iteration); the inputs stay fixed
        inputs, labels = relabel(inputs, labels, seed=args.seed * 100_003 + iteration + 1)
        batches = torch.randint(args.num_images, (args.steps_per_iteration, args.batch_size), device=device,
                                generator=batch_generator)
        for learner in learners:
            learner.start_iteration(device)
        for step, batch in enumerate(batches):
            if run.interrupted:
                break
            x, y = inputs[batch], labels[batch]
            for learner in learners:  # lockstep: every optimizer sees the same batch
                learner.train_step(x, y, measure_after_reset=step < args.stats_window,
                                   measure_final=step == args.steps_per_iteration - 1)
        if run.interrupted:
            break  # the checkpoint of the last whole iteration stays
        iteration += 1
        segment_steps += args.steps_per_iteration
        sps = segment_steps / (time.time() - segment_start)  # steps of each optimizer per second
        row = log_iteration(iteration, args.steps_per_iteration, **{"charts/SPS": sps})
        print(f"iteration {iteration}/{args.num_iterations} ({sps:.0f} steps/s): " + ", ".join(
            f"{n}: acc {row[f'charts/accuracy/{n}']:.3f} loss {row[f'losses/loss/{n}']:.3f} dead "
            f"{row[f'stats/dead_fraction_layer1/{n}']:.2f}/{row[f'stats/dead_fraction_layer2/{n}']:.2f}"
            for n in names), flush=True)
        if not run.diverged:
            save_checkpoint()

    run.save_figure(lambda: plot_fig1(learners), "fig1_adam_instability.png")
    return run.finish(iteration * args.steps_per_iteration, done=iteration >= args.num_iterations, metrics=row,
                      iterations=zip_histories(learners))

if __name__ == "__main__":
    main(train, Args)
