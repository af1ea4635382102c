"""Per-example gradients, the gradient cosine matrix C_k of eq. 3, and a k-means ordering of it for display (A.1).

    grads = per_example_grads(model, loss_fn, x, *targets)   # (k, d), one vectorised torch.func call
    C = gradient_covariance(grads)                             # (k, k) cosines
    neg_fraction, neg_mean = interference(C)                   # negative off-diagonal entries (Sec 2.1)
    interference_summary(C)                                    # those and the mean off-diagonal entry, to log
    order = kmeans_order(C, k=10)                              # C[order][:, order] shows the block structure
"""
import torch
from torch.func import functional_call, grad, vmap

from common.science.networks import eval_mode


def per_example_grads(model, loss_fn, inputs, *targets, chunk_size=None):
    """Gradients of ``loss_fn`` for each example separately, flattened over all trainable parameters: ``(k, d)``.

    ``loss_fn(outputs, *targets)`` is an ordinary batched loss; it is called once per example with a batch of one
    (``outputs = model(inputs[i:i+1])``, ``targets`` sliced the same way), so the training loss can be reused as it
    is. Computed with ``vmap(grad)`` in eval mode (BatchNorm uses running statistics: a batch of one has none).
    ``chunk_size`` bounds the memory of the vmap (it materialises per-example weight gradients).
    """
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def example_loss(params, x, *ys):
        outputs = functional_call(model, (params, frozen, buffers), (x.unsqueeze(0),))
        return loss_fn(outputs, *(y.unsqueeze(0) for y in ys))

    with eval_mode(model):
        grads = vmap(grad(example_loss), in_dims=(None, 0, *[0] * len(targets)), chunk_size=chunk_size)(
            params, inputs, *targets)
    return torch.cat([g.reshape(len(inputs), -1) for g in grads.values()], dim=1)  # parameters' order


def gradient_covariance(grads):
    """Eq. 3: ``C[i, j] = <g_i, g_j> / (||g_i|| ||g_j||)`` for the rows of a ``(k, d)`` gradient matrix.

    A zero gradient has no direction; its row and column are nan. The inner products are accumulated in float64
    (a float32 sum over millions of terms depends on the BLAS's summation order by about 1e-4), so the result is
    exact to the precision of ``grads``: the diagonal is 1 and the matrix is symmetric on every CPU.
    """
    gram = grads.new_zeros((len(grads), len(grads)), dtype=torch.float64)
    for chunk in grads.split(1 << 20, dim=1):  # bounds the float64 copy's memory
        chunk = chunk.double()
        gram += chunk @ chunk.T
    norms = gram.diagonal().sqrt()
    return (gram / (norms[:, None] * norms[None, :])).to(grads.dtype)


def interference(C):
    """Fraction of the off-diagonal entries of ``C`` that are negative, and their mean (0 when there are none);
    0-d tensors, computed without a host synchronisation (Sec 2.1: negative entries mean interference)."""
    off_diagonal = C[~torch.eye(len(C), dtype=torch.bool, device=C.device)]
    negative = (off_diagonal < 0).to(C.dtype)
    count = negative.sum()
    return count / off_diagonal.numel(), (off_diagonal * negative).sum() / count.clamp_min(1)


def interference_summary(C):
    """The mean off-diagonal entry of ``C`` and its negative entries' fraction and mean (``interference``), as
    0-d tensors keyed for logging (Fig 7 bottom, 19-20)."""
    off_diagonal = C[~torch.eye(len(C), dtype=torch.bool, device=C.device)]
    neg_fraction, neg_mean = interference(C)
    return {"grad_cov_offdiag_mean": off_diagonal.nanmean(), "grad_cov_neg_fraction": neg_fraction,
            "grad_cov_neg_mean": neg_mean}


def kmeans_order(C, k=10, seed=0, iters=50):
    """A permutation of the rows of ``C`` grouping them by k-means clusters (A.1: k = 10, the number of latent
    states), largest cluster first and the original order within a cluster. Display ``C[order][:, order]``."""
    points = C.float().nan_to_num(0.0)  # a zero gradient's nan row joins whichever cluster is nearest the origin
    n = len(points)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    generator = torch.Generator().manual_seed(seed)
    # k-means++ initialisation, then Lloyd iterations.
    centroids = points[torch.randint(n, (1,), generator=generator)]
    for _ in range(1, k):
        dist = torch.cdist(points, centroids).min(dim=1).values ** 2
        probs = dist.cpu() + 1e-12  # identical points would otherwise leave nothing to sample
        centroids = torch.cat([centroids, points[torch.multinomial(probs, 1, generator=generator).to(C.device)]])
    for _ in range(iters):
        labels = torch.cdist(points, centroids).argmin(dim=1)
        one_hot = torch.nn.functional.one_hot(labels, k).to(points.dtype)
        counts = one_hot.sum(0)
        means = one_hot.T @ points / counts.clamp_min(1)[:, None]
        centroids = torch.where(counts[:, None] > 0, means, centroids)  # an empty cluster keeps its centroid
    labels = torch.cdist(points, centroids).argmin(dim=1)
    rank = torch.argsort(torch.bincount(labels, minlength=k), descending=True, stable=True)
    position = torch.argsort(rank)  # position[c]: where cluster c goes in the display
    return torch.argsort(position[labels], stable=True)
