"""The curvature figures: C_k heat maps and Hessian spectral densities. Each function imports the curvature code it
draws from, so importing this module loads neither."""
import numpy as np
import torch

from common.runtime.logger import pyplot


def draw_grad_cov(snapshots, title, frames_per_step=4):
    """A row of C_k heat maps over training (Fig 19-20), rows and columns in k-means order (A.1).

    ``snapshots`` is a list of ``(step, C_k)``; at most five, evenly spaced, are drawn."""
    from common.science.grad_cov import kmeans_order

    plt = pyplot()
    picks = [snapshots[i] for i in sorted(set(np.linspace(0, len(snapshots) - 1, 5).astype(int)))]
    fig, axes = plt.subplots(1, len(picks), figsize=(3 * len(picks), 3), squeeze=False)
    for ax, (step, cov) in zip(axes[0], picks):
        cov = torch.as_tensor(cov)
        order = kmeans_order(cov, k=min(10, len(cov)))
        image = ax.imshow(cov[order][:, order], vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"{step * frames_per_step / 1e6:.2f}M frames", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title)
    return fig


def draw_spectral_densities(snapshots, title, frames_per_step=4):
    """Gaussian-smoothed Hessian spectral densities over training (Fig 21-22), one curve per ``(step, nodes,
    weights)`` snapshot of a Lanczos run."""
    from common.science.hessian import spectral_density

    plt = pyplot()
    low = min(float(nodes[0]) for _, nodes, _ in snapshots)
    high = max(float(nodes[-1]) for _, nodes, _ in snapshots)
    margin = 0.05 * (high - low) + 1e-6
    grid = torch.linspace(low - margin, high + margin, 1000, dtype=torch.float64)
    sigma2 = 1e-5 * (high - low + 2 * margin) ** 2  # a kernel width relative to the spectrum's range
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.cm.viridis(np.linspace(0, 1, len(snapshots)))
    for (step, nodes, weights), colour in zip(snapshots, colours):
        density = spectral_density(nodes, weights, grid, sigma2).clamp_min(1e-12)
        ax.plot(grid, density, color=colour, lw=1, label=f"{step * frames_per_step:,} frames")
    ax.set(yscale="log", xlabel="eigenvalue", ylabel="density", title=title)
    ax.legend(fontsize=7)
    return fig
