"""Hessian-vector products, Lanczos and the Gaussian-smoothed spectral density of Ghorbani et al. (2019) (Sec 2.1, A.1).

Typical use, on a fixed batch::

    matvec, dim = hessian_matvec(lambda: loss_fn(model(x), y), list(model.parameters()))
    nodes, weights = lanczos(matvec, dim, num_iters=90)
    density = spectral_density(nodes, weights, grid, sigma2)

``hessian_matvec`` builds the gradient graph once and differentiates it again for every product (double
backward), as PyHessian does for a single batch, rather than torch.func's forward-over-reverse
``jvp(grad)``, which measured slower (``benchmarks/RESULTS.md``). It also multiplies a ``(n, dim)`` batch of
vectors in one vmapped double backward, so ``lanczos_batched`` runs the ``n_v`` runs of a density (Ghorbani et
al. 2019) in lockstep.
Lanczos keeps its recurrence in float64, stores the basis in the products' precision, and reorthogonalises only
when an estimate of the lost orthogonality calls for it (partial reorthogonalisation, Simon 1984), which saves
memory-bound passes over the basis. Speeds and accuracy against the real PyHessian are in
``benchmarks/RESULTS.md``.
"""
import math

import torch


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vec, like):
    return [v.view_as(p) for v, p in zip(vec.split([p.numel() for p in like]), like)]


def hessian_matvec(loss_fn, params):
    """Return ``(matvec, dim)``: ``matvec(v)`` is the Hessian of ``loss_fn()`` at ``params`` times a flat ``v``.

    ``loss_fn()`` is evaluated once, here; its gradient graph is kept and differentiated again by every call, so
    the batch and the parameters are frozen at this moment. ``v`` may have any float dtype and device; the product
    has those of ``params``. A ``(n, dim)`` batch of vectors is multiplied in one vmapped double backward
    (``is_grads_batched``), which ``lanczos_batched`` uses. For a module with BatchNorm or dropout, build the
    closure inside ``common.science.networks.eval_mode(model)``.
    """
    params = list(params)
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    dtype = params[0].dtype

    def matvec(v):
        v = v.to(params[0].device, dtype)
        if v.dim() == 1:
            return _flat(torch.autograd.grad(grads, params, grad_outputs=_unflat(v, params), retain_graph=True))
        columns = [c.view(len(v), *p.shape) for c, p in zip(v.split([p.numel() for p in params], dim=1), params)]
        products = torch.autograd.grad(grads, params, grad_outputs=columns, retain_graph=True, is_grads_batched=True)
        return torch.cat([h.reshape(len(v), -1) for h in products], dim=1)

    return matvec, sum(p.numel() for p in params)


def hvp(loss_fn, params, vec):
    """Hessian of ``loss_fn()`` with respect to ``params`` times ``vec`` (a flat vector, or tensors like ``params``).

    The result has the same form as ``vec``. For many products at the same point, use ``hessian_matvec``.
    """
    params = list(params)
    matvec, _ = hessian_matvec(loss_fn, params)
    if isinstance(vec, torch.Tensor):
        return matvec(vec)
    return _unflat(matvec(_flat(vec)), params)


def start_vector(dim, seed):
    """The unit start vector of ``lanczos(..., seed=seed)``: a float64 Gaussian from a CPU generator."""
    v = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return v / torch.linalg.vector_norm(v)


def lanczos(matvec, dim, num_iters, *, seed=0):
    """Lanczos with partial reorthogonalisation on the symmetric operator ``matvec`` over ``R^dim``.

    Returns ``(nodes, weights)``, float64 on the CPU: the Ritz values (eigenvalues of the tridiagonal matrix T),
    ascending, and the squared first components of T's eigenvectors, which sum to 1: the Gaussian-quadrature
    estimate of the spectral measure seen from the random start vector (Ghorbani et al. 2019). With
    ``num_iters == dim`` the nodes are the operator's eigenvalues. If the Krylov space becomes exactly invariant
    (a zero off-diagonal), T is cut there and fewer nodes come back. See ``lanczos_batched`` for the numerics.
    """
    alphas, betas = _lanczos_coefficients(lambda v: matvec(v[0])[None], dim, num_iters, 1, seed)
    return _quadrature(alphas[0], betas[0])


def lanczos_batched(matvec, dim, num_iters, num_runs, *, seed=0):
    """``num_runs`` independent Lanczos runs in lockstep; run r is ``lanczos(..., seed=seed + r)``.

    ``matvec`` maps a ``(num_runs, dim)`` batch of vectors to their products (``hessian_matvec``'s does, in one
    vmapped double backward: one call instead of ``num_runs``, which saves kernel launches on a GPU; on a CPU the
    products cost about as much as single ones, ``benchmarks/RESULTS.md``). Returns ``(nodes, weights)`` of
    shape ``(num_runs, num_iters)``, for ``spectral_density``; a run that hits an invariant subspace early is
    padded with nodes of weight 0.

    Numerics: the current vectors, the recurrence and T are float64. The basis (``num_runs x num_iters x dim``, on
    the device of the first product) is stored in the products' precision, at least float32: a float32 Hessian-
    vector product is only float32-accurate, and a pass over the basis is memory-bound, so float32 storage halves
    it. After the three-term recurrence, a run's new vector is reorthogonalised against its whole basis
    (classical Gram-Schmidt as two matrix-vector products) only when that run's estimated loss of orthogonality
    exceeds the square root of that precision (``_Orthogonality``), so each run follows exactly its single-run
    schedule; the normalisation adds no epsilon. One host synchronisation per step (the decision), negligible
    against a product.
    """
    alphas, betas = _lanczos_coefficients(matvec, dim, num_iters, num_runs, seed)
    nodes = torch.zeros(num_runs, num_iters, dtype=torch.float64)
    weights = torch.zeros(num_runs, num_iters, dtype=torch.float64)
    for r in range(num_runs):
        run_nodes, run_weights = _quadrature(alphas[r], betas[r])
        m = len(run_nodes)
        nodes[r, :m], weights[r, :m], nodes[r, m:] = run_nodes, run_weights, run_nodes[-1]
    return nodes, weights


def _lanczos_coefficients(matvec, dim, num_iters, num_runs, seed):
    """The diagonals ``(alphas, betas)`` of each run's T, ``(num_runs, num_iters)`` float64 on the CPU."""
    if not 1 <= num_iters <= dim:
        raise ValueError(f"num_iters must be in [1, dim={dim}], got {num_iters}")
    if num_runs < 1:
        raise ValueError(f"num_runs must be at least 1, got {num_runs}")
    v = torch.stack([start_vector(dim, seed + r) for r in range(num_runs)])
    w = matvec(v)
    device, storage = w.device, torch.promote_types(w.dtype, torch.float32)
    v, w = v.to(device), w.to(torch.float64)
    basis = torch.zeros(num_runs, num_iters, dim, dtype=storage, device=device)
    alphas = torch.zeros(num_runs, num_iters, dtype=torch.float64)
    betas = torch.zeros(num_runs, num_iters, dtype=torch.float64)
    orthogonality = _Orthogonality(num_runs, num_iters, torch.finfo(storage).eps)
    # In-place updates with per-run scalars as (runs, 1) columns: each line is one pass over the vectors, which
    # are memory-bound at this size.
    for i in range(num_iters):
        basis[:, i] = v
        if i > 0:
            w = matvec(basis[:, i]).to(torch.float64)
            w.addcmul_(previous_v, beta[:, None], value=-1)
        alpha = torch.linalg.vecdot(w, v)
        w.addcmul_(v, alpha[:, None], value=-1)
        beta = torch.linalg.vector_norm(w, dim=1)
        alphas[:, i], betas[:, i] = alpha.cpu(), beta.cpu()  # one synchronisation per step, for the decision
        for r in orthogonality.lost(alphas, betas, i):  # the runs whose estimate calls for it, one at a time
            stored = basis[r, : i + 1]  # (i + 1, dim)
            w[r] -= stored.T @ (stored @ w[r].to(storage))
            beta[r] = torch.linalg.vector_norm(w[r])
            betas[r, i] = beta[r].cpu()
        previous_v, v = v, w.div_(beta[:, None])
    return alphas, betas


class _Orthogonality:
    """Partial reorthogonalisation (Simon 1984): estimate the inner products ``omega[k] = v_{i+1} . v_k`` from
    the recurrence coefficients alone, and reorthogonalise against the whole basis only when one exceeds
    ``sqrt(eps)`` (semi-orthogonality, which keeps T's eigenvalues accurate to working precision), and again at
    the next step, since the three-term recurrence passes the loss on. ``eps`` is the basis' precision."""

    def __init__(self, num_runs, num_iters, eps):
        self.eps, self.threshold = eps, math.sqrt(eps)
        self.force = torch.zeros(num_runs, dtype=torch.bool)
        self.previous = torch.zeros(num_runs, num_iters + 1, dtype=torch.float64)  # omega_{i-1, k}
        self.current = torch.zeros(num_runs, num_iters + 1, dtype=torch.float64)  # omega_{i, k}

    def lost(self, alphas, betas, i):
        """Advance the estimates to ``v_{i+1}``; return the runs to reorthogonalise now (their estimates reset)."""
        current, previous = self.current.clone(), self.previous
        current[:, i] = 1.0
        a, b = alphas[:, : i + 1], betas[:, : i + 1]
        new = torch.zeros_like(current)
        # beta_i w_{i+1,k} = beta_k w_{i,k+1} + (alpha_k - alpha_i) w_{i,k} + beta_{k-1} w_{i,k-1} - beta_{i-1} w_{i-1,k}
        new[:, :i] = b[:, :i] * current[:, 1:i + 1] + (a[:, :i] - a[:, i:i + 1]) * current[:, :i]
        if i > 0:
            new[:, 1:i] += b[:, :i - 1] * current[:, :i - 1]
            new[:, :i] -= b[:, i - 1:i] * previous[:, :i]
        # rounding in the product and the recurrence, as in Simon's model: a few eps of the largest coefficients
        noise = self.eps * (a.abs().max(1, keepdim=True).values + 2 * b.max(1, keepdim=True).values)
        new[:, :i] = (new[:, :i] + new[:, :i].sign() * noise) / b[:, i:i + 1]
        new[:, i] = self.eps  # v_{i+1} was orthogonalised against v_i locally
        lost = (new[:, :i].abs() > self.threshold).any(1) | ~(b[:, i] > 0)
        reorthogonalise = lost | self.force
        self.force = lost & ~self.force
        new[reorthogonalise, : i + 1] = self.eps
        self.previous, self.current = current, new
        return reorthogonalise.nonzero().flatten().tolist()


def _quadrature(alphas, betas):
    """Ritz values (ascending) and weights of one run's T, cut at its first zero (or nan) off-diagonal.

    A tiny but nonzero beta is harmless: the reorthogonalised rounding noise is a fresh unit vector orthogonal to
    the basis, i.e. a restart, and T stays V^T H V. Only an exact zero needs cutting.
    """
    breakdown = torch.nonzero(~(betas[:-1] > 0)).flatten()  # also catches nan
    m = int(breakdown[0]) + 1 if len(breakdown) else len(alphas)
    tridiagonal = torch.diag(alphas[:m]) + torch.diag(betas[: m - 1], 1) + torch.diag(betas[: m - 1], -1)
    nodes, vectors = torch.linalg.eigh(tridiagonal)
    return nodes, vectors[0] ** 2


def spectral_density(nodes, weights, grid, sigma2):
    """Gaussian-smoothed spectral density on ``grid``: ``sum_i weights_i * N(grid; nodes_i, sigma2)``.

    ``nodes`` and ``weights`` come from ``lanczos``; a leading dimension of several runs (different seeds) is
    averaged, as in Ghorbani et al. (2019). The density integrates to the total weight (1 per run) when the grid
    covers the nodes with a margin of several ``sqrt(sigma2)``; nothing is renormalised here.
    """
    nodes, weights = torch.as_tensor(nodes, dtype=torch.float64), torch.as_tensor(weights, dtype=torch.float64)
    runs = nodes.shape[0] if nodes.dim() == 2 else 1
    grid = torch.as_tensor(grid, dtype=torch.float64)
    gauss = torch.exp(-((grid[:, None] - nodes.reshape(-1)[None, :]) ** 2) / (2 * sigma2))
    return gauss @ weights.reshape(-1) / (runs * math.sqrt(2 * math.pi * sigma2))


def top_eigenvalue(matvec, dim, num_iters=30, *, seed=0):
    """The largest eigenvalue of ``matvec`` by Lanczos (its extreme Ritz values converge far faster than power
    iteration, which can stop several percent low); a 0-d float64 tensor."""
    nodes, _ = lanczos(matvec, dim, min(num_iters, dim), seed=seed)
    return nodes[-1]
