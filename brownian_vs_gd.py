"""Gradient descent vs a norm-matched random walk from one initialisation: the loss landscape each reaches (Fig 2).

Sec 4.2 and A.1. Two coupled trajectories start from the same parameters. One takes SGD steps on the Q-learning
loss (eq. 1) of the true-label ("easy") classification MDP with MNIST observations; the other takes, at every step,
a Gaussian step rescaled to the norm of that step's SGD update. At regular checkpoints, for both, we measure the
landscape of the probe loss l(theta) = mean_x ||f(x) - sg(f(x)) + eps||^2, eps ~ N(0, I) drawn once for the run:
its Hessian spectral density (Lanczos, Ghorbani et al. 2019) and the gradient cosine matrix C_k of eq. 3.
Run: ``python brownian_vs_gd.py``; the reduced CPU configuration is in docs/brownian_vs_gd.md.
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

from common.errors import UsageError, check
from common.runtime.cli import main, select_device
from common.runtime.logger import pyplot
from common.runtime.run import Run, seed_everything
from common.science.classification import ClassificationMDP, load_dataset
from common.science.grad_cov import gradient_covariance, interference, kmeans_order, per_example_grads
from common.science.hessian import hessian_matvec, lanczos, spectral_density
from common.science.networks import build_network, eval_mode
from common.science.stats import distance_from

NUM_ACTIONS = 10


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment: the script's file name (CleanRL)"""
    seed: int = 1
    """seed of the experiment"""
    cuda: bool = True
    """use the GPU when there is one"""
    track: bool = False
    """log to Weights & Biases as well (needs wandb installed)"""
    run_dir: Optional[str] = None
    """the run directory; default runs/<exp_name>__<seed>__<time>"""
    resume: bool = False
    """continue the run in --run-dir from its checkpoint.pt (written after every curvature measurement)"""
    data_dir: str = os.environ.get("PLASTICITY_DATA_DIR", "data")
    """where MNIST is (torchvision's layout); downloaded there when missing and online"""
    num_images: int = 0
    """use the first N MNIST training images (0: all); a deviation for quick runs"""

    width: int = 512
    """hidden width of the two-layer MLP (A.1 names no network; A.2's MLP has width 512)"""
    total_steps: int = 100_000
    """SGD steps (not given in A.1; 20 target-network periods)"""
    learning_rate: float = 1e-3
    """SGD learning rate (A.1)"""
    batch_size: int = 512
    """transitions per SGD step (A.1)"""
    gamma: float = 0.9
    """discount (not given; 0.9 as in dqn_classification_mdp.py, Q-values in [0, 10])"""
    target_period: int = 5_000
    """SGD steps between target-network updates (A.1)"""

    eval_every: int = 10_000
    """SGD steps between curvature checkpoints; step 0 and the last step are always measured (not given)"""
    hessian_inputs: int = 2_048
    """MNIST images in the probe loss's Hessian batch (A.1: "a single large batch"; its size is not given)"""
    lanczos_iters: int = 90
    """Lanczos steps for the density and top eigenvalue (not given; PyHessian's default is 100)"""
    num_grad_samples: int = 512
    """k, the inputs of C_k, drawn from the Hessian batch (Sec 4.2: k = 512, the batch size)"""
    num_clusters: int = 10
    """k-means clusters that order C_k for display (A.1: 10, the number of latent states)"""
    shared_eps: bool = True
    """one eps ~ N(0, I) for all probe inputs (our reading of Sec 4.2); per-input eps: C_k half negative regardless"""
    density_sigma2: float = 1e-5
    """Gaussian kernel variance over the squared spectral range (not given; PyHessian: 1e-5 x max(1, range))"""
    log_every: int = 1_000
    """SGD steps between TD-loss logs (each log is the only host sync of the loop)"""


def validate(args):
    for name in ("width", "total_steps", "batch_size", "target_period", "eval_every", "hessian_inputs",
                 "lanczos_iters", "num_grad_samples", "num_clusters", "log_every", "learning_rate", "density_sigma2"):
        check(getattr(args, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    check(args.lanczos_iters <= 1_000, f"--lanczos-iters must be at most 1,000, got {args.lanczos_iters}: the "
          "density settles within about 100 steps (PyHessian's default) and each step re-orthogonalises against all "
          "earlier ones, so thousands take hours")
    check(args.num_images >= 0, f"--num-images must be non-negative, got {args.num_images}")
    check(0 <= args.gamma < 1, f"--gamma must be in [0, 1), got {args.gamma}")
    check(args.num_grad_samples <= args.hessian_inputs,
          f"--num-grad-samples ({args.num_grad_samples}) cannot exceed --hessian-inputs ({args.hessian_inputs})")
    check(args.num_clusters <= args.num_grad_samples,
          f"--num-clusters ({args.num_clusters}) cannot exceed --num-grad-samples ({args.num_grad_samples})")


def td_loss(q_network, target_network, images, obs, actions, rewards, next_obs, gamma):
    """Eq. 1 with Q-learning targets: (Q(s, a) - sg(r + gamma max_a' Q_target(s', a')))^2, mean over the batch."""
    with torch.no_grad():
        targets = rewards + gamma * target_network(images[next_obs]).max(1).values
    q = q_network(images[obs])
    taken = q.gather(1, actions[:, None]).squeeze(1)
    return (taken - targets).square().mean(), q.detach().mean()


def probe_loss(out, eps):
    """Sec 4.2: ||f(X) - sg(f(X)) + eps||^2, summed over outputs, mean over inputs; its value is always ||eps||^2."""
    return (out - out.detach() + eps).square().sum(-1).mean()


@torch.no_grad()
def coupled_step(gd_params, walk_params, grads, lr, generator):
    """SGD on ``gd_params``; a Gaussian step of the same norm (over all parameters) on ``walk_params``.

    Returns the common step norm, a 0-d tensor (no host sync).
    """
    step_norm = lr * torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_add_(gd_params, grads, alpha=-lr)
    noise = torch.randn(sum(p.numel() for p in walk_params), generator=generator, device=step_norm.device)
    noise *= step_norm / torch.linalg.vector_norm(noise)
    torch._foreach_add_(walk_params, [n.view_as(p) for n, p in zip(noise.split([p.numel() for p in walk_params]),
                                                                   walk_params)])
    return step_norm


def measure_curvature(net, x, eps, args):
    """Lanczos nodes/weights of the probe loss's Hessian on (x, eps), and C_k on the first k inputs."""
    with eval_mode(net):
        matvec, dim = hessian_matvec(lambda: probe_loss(net(x), eps), list(net.parameters()))
        nodes, weights = lanczos(matvec, dim, min(args.lanczos_iters, dim), seed=args.seed)
    k = args.num_grad_samples
    C = gradient_covariance(per_example_grads(net, probe_loss, x[:k], eps[:k]))
    neg_fraction, neg_mean = interference(C)
    return {"nodes": nodes, "weights": weights, "C": C.cpu()}, {
        "top_eigenvalue": nodes[-1], "min_eigenvalue": nodes[0],
        "grad_cov_neg_fraction": neg_fraction, "grad_cov_neg_mean": neg_mean}


def plot_fig2(records, steps, args):
    """Fig 2: Hessian densities at the start and the end for both processes, and the two final ordered C_k."""
    plt = pyplot()

    ends = {name: (records[name][0], records[name][-1]) for name in ("gd", "walk")}
    all_nodes = torch.cat([r["nodes"] for pair in ends.values() for r in pair])
    low, high = all_nodes.min().item(), all_nodes.max().item()
    span = max(high - low, 1e-12)
    grid = torch.linspace(low - 0.05 * span, high + 0.05 * span, 4000, dtype=torch.float64)
    sigma2 = args.density_sigma2 * span ** 2
    fig, axes = plt.subplots(2, 2, figsize=(12, 10))
    titles = {"gd": "gradient descent", "walk": "random walk"}
    for ax, name in zip(axes[0], ("gd", "walk")):
        for record, step, style in zip(ends[name], (steps[0], steps[-1]), ("--", "-")):
            density = spectral_density(record["nodes"], record["weights"], grid, sigma2).clamp_min(1e-12)
            ax.semilogy(grid, density, style, label=f"step {step:,} (top {record['nodes'][-1]:.3g})")
        ax.set(xlabel="eigenvalue", ylabel="density", title=f"Probe-loss Hessian density: {titles[name]}",
               ylim=(1e-6 / span, None))
        ax.legend(fontsize=8)
    for ax, name in zip(axes[1], ("gd", "walk")):
        C = ends[name][1]["C"]
        order = kmeans_order(C, args.num_clusters, seed=args.seed)
        image = ax.imshow(C[order][:, order], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        fraction, _ = interference(C)
        ax.set(title=f"$C_k$, {titles[name]} ({fraction:.1%} negative)", xticks=[], yticks=[])
    fig.colorbar(image, ax=axes[1], fraction=0.03)
    fig.suptitle(f"Gradient descent vs norm-matched random walk, steps {steps[0]:,} and {steps[-1]:,} "
                 f"(MLP width {args.width}, seed {args.seed})")
    return fig


def train(args):
    validate(args)
    run = Run(args, total="total_steps")
    if run.finished:
        return run.finished
    seed_everything(args.seed)
    device = select_device(args.cuda)
    images, labels = load_dataset("mnist", args.data_dir, train=True, device=device)
    if args.num_images:
        images, labels = images[:args.num_images], labels[:args.num_images]
    try:
        # A batch of fresh transitions per step: in the true-label MDP the next state is uniformly random whatever
        # the action (Sec 3.2), so these are i.i.d. draws of the stationary transition distribution, and the only
        # non-stationarity is the target network's (Sec 2.1). The behaviour policy is uniformly random.
        env = ClassificationMDP(images, labels, "true_label", args.batch_size, seed=args.seed)
    except ValueError as e:
        raise UsageError(f"{e}; use more --num-images") from None
    generator = torch.Generator(device).manual_seed(args.seed)

    gd_net = build_network("mlp", tuple(images.shape[1:]), NUM_ACTIONS, width=args.width).to(device)
    walk_net = copy.deepcopy(gd_net)  # one initialisation for both processes
    target_net = copy.deepcopy(gd_net)
    gd_params, walk_params = list(gd_net.parameters()), list(walk_net.parameters())
    start_params = [p.detach().clone() for p in gd_params]

    # The probe loss's single large batch (A.1) and its perturbation eps ~ N(0, 1) (Sec 4.2), fixed for the run and
    # shared by both processes. With an independent eps per input, the per-example gradients 2 J_i^T eps_i would
    # have independent signs, so half of C_k's entries would be negative at any parameters; one eps for all inputs
    # keeps C_k about the parameters, which is what Sec 4.2 compares.
    probe_x = images[torch.randint(len(images), (args.hessian_inputs,), generator=generator, device=device)]
    probe_eps = torch.randn(1 if args.shared_eps else args.hessian_inputs, NUM_ACTIONS, generator=generator,
                            device=device).expand(args.hessian_inputs, NUM_ACTIONS).contiguous()

    records, checkpoint_steps, final = {"gd": [], "walk": []}, [], {}
    step, window = 0, torch.zeros(3, device=device)  # the log window's sums of loss, Q, step norm
    obs = env.reset()
    ckpt = run.load_checkpoint(device)
    if ckpt:
        check("log_window" in ckpt, f"{run.checkpoint_path} lacks the log window (from an older version of this "
              f"code): start afresh with another --run-dir")
        for net, key in ((gd_net, "gd_net"), (walk_net, "walk_net"), (target_net, "target_net")):
            net.load_state_dict(ckpt[key])
        start_params, obs = ckpt["start_params"], ckpt["obs"]
        env.load_state_dict(ckpt["env"])
        generator.set_state(ckpt["generator"].cpu())
        step, window, records, checkpoint_steps, final = (ckpt[k] for k in ("step", "log_window", "records",
                                                                            "checkpoint_steps", "final"))
        run.measured.setdefault("curvature", checkpoint_steps[-1] if checkpoint_steps else -1)  # an older checkpoint
    run.start(step)
    print(f"device {device}, {sum(p.numel() for p in gd_params):,} parameters")

    def save_checkpoint():
        run.save_checkpoint({"gd_net": gd_net.state_dict(), "walk_net": walk_net.state_dict(),
                             "target_net": target_net.state_dict(), "start_params": start_params,
                             "env": env.state_dict(), "obs": obs, "generator": generator.get_state(), "step": step,
                             "log_window": window, "records": records, "checkpoint_steps": checkpoint_steps,
                             "final": final}, step)

    def curvature_of_both():
        metrics, new_records = {}, {}
        for name, net in (("gd", gd_net), ("walk", walk_net)):
            new_records[name], scalars = measure_curvature(net, probe_x, probe_eps, args)
            scalars["distance_from_init"] = distance_from(net, start_params)
            metrics.update({f"curvature/{name}/{key}": value for key, value in scalars.items()})
        return metrics, new_records

    def measure_and_log(step):
        """The curvature of both processes at ``step`` unless made already (``Run.measure``: a signal abandons it,
        and the resumed run redoes it)."""
        measured = run.measure("curvature", step, curvature_of_both, generator)
        if measured is None:
            return
        metrics, new_records = measured
        for name, record in new_records.items():
            records[name].append(record)
        checkpoint_steps.append(step)
        row = run.log(step, metrics)
        gd, walk = ({k.split("/")[-1]: v for k, v in row.items() if k.startswith(f"curvature/{n}/")}
                    for n in ("gd", "walk"))
        print(f"step {step:>8,}  top eigenvalue: gd {gd['top_eigenvalue']:.4g} walk {walk['top_eigenvalue']:.4g}  "
              f"negative C_k: gd {gd['grad_cov_neg_fraction']:.1%} walk {walk['grad_cov_neg_fraction']:.1%}  "
              f"distance from init: gd {gd['distance_from_init']:.3g} walk {walk['distance_from_init']:.3g}",
              flush=True)
        final.update({k: v for k, v in row.items() if k != "step"})

    def curvature_due():
        return step % args.eval_every == 0 or step == args.total_steps

    window_time = time.time()
    if curvature_due():  # step 0, or a measurement that a signal abandoned before the checkpoint
        measure_and_log(step)
    while step < args.total_steps and not run.stopping:
        actions = torch.randint(NUM_ACTIONS, obs.shape, generator=generator, device=device)
        next_obs, rewards = env.step(actions)
        loss, q_mean = td_loss(gd_net, target_net, images, obs, actions, rewards, next_obs, args.gamma)
        obs = next_obs
        grads = torch.autograd.grad(loss, gd_params)
        step_norm = coupled_step(gd_params, walk_params, grads, args.learning_rate, generator)
        step += 1
        window += torch.stack([loss.detach(), q_mean, step_norm])

        if step % args.target_period == 0:
            target_net.load_state_dict(gd_net.state_dict())
        if step % args.log_every == 0:
            sps = args.log_every / (time.time() - window_time)
            mean = (window / args.log_every).tolist()  # the one host sync per log window
            final.update({k: v for k, v in run.log(step, {
                "losses/td_loss": mean[0], "losses/q_values": mean[1], "curvature/step_norm": mean[2],
                "charts/SPS": sps}).items() if k != "step"})
            window.zero_()
            window_time = time.time()
        if curvature_due() and not run.diverged:
            measure_and_log(step)
            if not run.stopping:
                save_checkpoint()
            window_time = time.time()  # SPS measures training, not the curvature measurements
    if not run.diverged:
        save_checkpoint()

    run.save_figure(lambda: plot_fig2(records, checkpoint_steps, args), "fig2_brownian_vs_gd.png")
    torch.save({"steps": checkpoint_steps, "gd": records["gd"], "walk": records["walk"]},
               os.path.join(run.run_dir, "curvature.pt"))
    return run.finish(step, done=step >= args.total_steps and not run.pending, metrics=final)


if __name__ == "__main__":
    main(train, Args)
