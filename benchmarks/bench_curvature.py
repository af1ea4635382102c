"""Curvature tools against their peers and the simplest correct versions, timed in the same run; appends to RESULTS.md.

1. Hessian-vector products on a 784-128-128-10 MLP, batch 512: double backward through a gradient graph built once
   (``common.science.hessian.hessian_matvec``), a fresh double backward per product, and torch.func ``jvp(grad)``.
2. A 90-step Lanczos density on a 784-512-512-10 MLP, batch 512, against the real PyHessian (``pip install
   pyhessian``: an optional benchmark dependency, never vendored and not in requirements.txt; without it this
   section says so and times only the rest): one run (``density(iter=90, n_v=1)`` against ``lanczos``) and
   ``--nv`` runs (``density(n_v=...)`` against ``lanczos_batched``). Accuracy: the extreme Ritz values against a
   long float64 fully reorthogonalised reference run. An extra row times our earlier reimplementation of
   PyHessian's loop with a fresh gradient graph per product (the baseline of the old "2.13x"; PyHessian itself
   reuses the graph for a single batch).
3. Per-example gradients for k = 512 (``common.science.grad_cov.per_example_grads``) against a loop of backward passes.

Timings alternate between the contenders and report the median, because these CPUs are shared. One torch thread
by default: on 2 cores shared with other jobs, two OpenMP threads stall each other. About 3 minutes on an idle
2-core CPU (PyHessian's n_v = 10 density alone is about 10 of its single runs):
    python benchmarks/bench_curvature.py [--repeats 3] [--threads 1] [--nv 10] [--no-write] [--cuda] [--budget-s 60]
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch
from torch.func import functional_call, grad, jvp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_dqn_classification import Budget, append  # noqa: E402
from common.science.grad_cov import per_example_grads  # noqa: E402
from common.science.hessian import hessian_matvec, lanczos, lanczos_batched  # noqa: E402
from common.science.networks import build_network  # noqa: E402

DEVICE = torch.device("cpu")  # --cuda: the GPU


def setup(width, batch=512, seed=0):
    torch.manual_seed(seed)
    net = build_network("mlp", (1, 28, 28), 10, width=width).to(DEVICE)
    x = torch.rand(batch, 1, 28, 28).to(DEVICE)
    eps = torch.randn(batch, 10).to(DEVICE)
    return net, x, eps


def probe_loss(out, eps):
    """The probe loss of Sec 4.2: mean over the batch of ||f(x) - sg(f(x)) + eps||^2."""
    return (out - out.detach() + eps).square().sum(-1).mean()


def timed(fn):
    synchronize()
    start = time.perf_counter()
    result = fn()
    synchronize()
    return time.perf_counter() - start, result


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def interleaved(contenders, repeats):
    """Run each contender ``repeats`` times, alternating; return {name: (median seconds, last result)}."""
    times, results = {name: [] for name in contenders}, {}
    for _ in range(repeats):
        for name, fn in contenders.items():
            seconds, results[name] = timed(fn)
            times[name].append(seconds)
    return {name: (statistics.median(t), results[name]) for name, t in times.items()}


def bench_hvp(repeats, products=20):
    net, x, eps = setup(128)
    params = list(net.parameters())
    loss_fn = lambda: probe_loss(net(x), eps)  # noqa: E731
    matvec, dim = hessian_matvec(loss_fn, params)
    v = torch.randn(dim).to(DEVICE)
    split = [c.view_as(p) for c, p in zip(v.split([p.numel() for p in params]), params)]

    def fresh():
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        return torch.autograd.grad(grads, params, grad_outputs=split)

    named = {n: p.detach() for n, p in net.named_parameters()}
    tangent = {n: t for n, t in zip(named, split)}
    grad_fn = grad(lambda p: probe_loss(functional_call(net, p, (x,)), eps))

    def forward_over_reverse():
        return list(jvp(grad_fn, (named,), (tangent,))[1].values())

    contenders = {"graph reused (ours)": lambda: [matvec(v) for _ in range(products)],
                  "fresh double backward": lambda: [fresh() for _ in range(products)],
                  "torch.func jvp(grad)": lambda: [forward_over_reverse() for _ in range(products)]}
    out = interleaved(contenders, repeats)
    reference = out["graph reused (ours)"][1][0]
    for name in ("fresh double backward", "torch.func jvp(grad)"):
        flat = torch.cat([h.reshape(-1) for h in out[name][1][0]])
        assert torch.allclose(flat, reference, rtol=1e-3, atol=1e-6 * reference.abs().max()), name
    return {name: seconds / products * 1e3 for name, (seconds, _) in out.items()}


def pyhessian_reimplementation(loss_fn, params, num_iters, start):
    """Our earlier reimplementation of PyHessian's loop, kept as an extra row: a fresh gradient graph per product
    (PyHessian does that only in its data-loader mode), float32 lists, Python-loop Gram-Schmidt."""
    def group_product(xs, ys):
        return sum(torch.sum(a * b) for a, b in zip(xs, ys))

    def normalise(vs):
        norm = torch.sqrt(group_product(vs, vs))
        return [v / norm for v in vs]

    def hvp(vs):
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        return [h.detach() for h in torch.autograd.grad(grads, params, grad_outputs=vs)]

    v = normalise([c.view_as(p).float() for c, p in zip(start.split([p.numel() for p in params]), params)])
    stored, alphas, betas = [v], [], []
    for i in range(num_iters):
        if i > 0:
            beta = torch.sqrt(group_product(w, w))
            betas.append(beta.item())
            v = w
            for u in stored:
                v = [a - group_product(v, u) * b for a, b in zip(v, u)]
            v = normalise(v)
            stored.append(v)
        w = hvp(v)
        alpha = group_product(w, v)
        alphas.append(alpha.item())
        w = [a - alpha * b for a, b in zip(w, v)]
        if i > 0:
            w = [a - beta * c for a, c in zip(w, stored[-2])]
    T = torch.diag(torch.tensor(alphas)) + torch.diag(torch.tensor(betas), 1) + torch.diag(torch.tensor(betas), -1)
    return torch.linalg.eigvalsh(T.double())


def reference_lanczos(matvec, dim, num_iters):
    """The simplest accurate Lanczos: float64 vectors, full reorthogonalisation (twice) at every step."""
    v = torch.randn(dim, generator=torch.Generator().manual_seed(12345), dtype=torch.float64).to(DEVICE)
    basis = torch.zeros(num_iters, dim, dtype=torch.float64, device=DEVICE)
    alphas, betas = (torch.zeros(num_iters, dtype=torch.float64, device=DEVICE) for _ in range(2))
    v /= v.norm()
    for i in range(num_iters):
        basis[i] = v
        w = matvec(v).double()
        alphas[i] = w @ v
        for _ in range(2):
            w -= basis[: i + 1].T @ (basis[: i + 1] @ w)
        betas[i] = w.norm()
        v = w / betas[i]
    T = torch.diag(alphas) + torch.diag(betas[:-1], 1) + torch.diag(betas[:-1], -1)
    return torch.linalg.eigvalsh(T.cpu())


def import_pyhessian():
    """The real PyHessian, or None. Its ``density`` ends with ``torch.eig``, removed from torch 2; on a torch
    without it, ``torch.eig`` is provided here as ``torch.linalg.eigh`` of the (symmetric) tridiagonal matrix,
    outside the timed Lanczos loop's cost (a 90 x 90 eigendecomposition)."""
    try:
        from pyhessian import hessian
    except ImportError:
        return None
    try:
        torch.eig(torch.eye(2), eigenvectors=True)
    except (RuntimeError, AttributeError):
        def eig(T, eigenvectors=False):
            values, vectors = torch.linalg.eigh(T)
            return torch.stack([values, torch.zeros_like(values)], 1), vectors
        torch.eig = eig
    return hessian


def bench_lanczos(repeats, nv, reference_iters, num_iters=90):
    net, x, eps = setup(512)
    params = list(net.parameters())
    loss_fn = lambda: probe_loss(net(x), eps)  # noqa: E731
    dim = sum(p.numel() for p in params)
    start = torch.randn(dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(DEVICE)
    hessian = import_pyhessian()

    def ours(runs):
        matvec, _ = hessian_matvec(loss_fn, params)
        if runs == 1:
            return lanczos(matvec, dim, num_iters)[0][None]
        return lanczos_batched(matvec, dim, num_iters, runs)[0]

    def pyhessian(runs):
        net.zero_grad(set_to_none=True)  # its backward(create_graph=True) accumulates into .grad
        eigenvalues, _ = hessian(net, probe_loss, data=(x, eps), cuda=DEVICE.type == "cuda").density(
            iter=num_iters, n_v=runs)
        return torch.tensor(eigenvalues, dtype=torch.float64).sort(dim=1).values

    contenders = {"ours": lambda: ours(1)}
    if hessian is not None:
        contenders["PyHessian"] = lambda: pyhessian(1)
    contenders["old reimplementation"] = lambda: pyhessian_reimplementation(loss_fn, params, num_iters, start)[None]
    out = {name: {"seconds": seconds, "nodes": nodes} for name, (seconds, nodes) in interleaved(contenders,
                                                                                                repeats).items()}
    many = {"ours": lambda: ours(nv)}
    if hessian is not None:
        many["PyHessian"] = lambda: pyhessian(nv)
    out_many = {name: {"seconds": seconds, "nodes": nodes} for name, (seconds, nodes) in interleaved(many, 1).items()}
    matvec, _ = hessian_matvec(loss_fn, params)
    reference = reference_lanczos(matvec, dim, reference_iters)
    scale = reference.abs().max()
    for row in (*out.values(), *out_many.values()):  # worst run's relative error of the extreme Ritz values
        row["top_err"] = ((row["nodes"][:, -1] - reference[-1]).abs().max() / scale).item()
        row["bottom_err"] = ((row["nodes"][:, 0] - reference[0]).abs().max() / scale).item()
    return dim, out, out_many, reference


def bench_per_example(repeats, width, k=512):
    net, x, eps = setup(width, batch=k)

    def loop():
        rows = []
        for i in range(k):
            grads = torch.autograd.grad(probe_loss(net(x[i:i + 1]), eps[i:i + 1]), list(net.parameters()))
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
        return torch.stack(rows)

    out = interleaved({"vmap": lambda: per_example_grads(net, probe_loss, x, eps), "loop": loop}, repeats)
    assert torch.allclose(out["vmap"][1], out["loop"][1], atol=1e-5)
    return out["vmap"][0], out["loop"][0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see the module docstring)")
    parser.add_argument("--nv", type=int, default=10, help="runs of the averaged density (PyHessian's n_v)")
    parser.add_argument("--reference-iters", type=int, default=150, help="steps of the accuracy reference run")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to --results")
    parser.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"),
                        help="the Markdown file the results are appended to")
    parser.add_argument("--cuda", action="store_true", help="run on the GPU")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="start no section after this many seconds (0: no limit); the results name what it cut")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device("cuda" if args.cuda else "cpu")
    budget = Budget(args.budget_s)
    torch.set_num_threads(args.threads)
    lines = [f"\n## Curvature tools\n",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
             f"{torch.cuda.get_device_name() if args.cuda else platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), load average {os.getloadavg()[0]:.1f}; "
             f"torch {torch.__version__}, Python {platform.python_version()}; median of {args.repeats} alternating "
             f"repeats (`python benchmarks/bench_curvature.py --repeats {args.repeats} --threads {args.threads} "
             f"--nv {args.nv} --reference-iters {args.reference_iters}{' --cuda' if args.cuda else ''}`).\n"]
    write = (lambda: None) if args.no_write else (lambda: append(args.results, lines + budget.note()))
    hvp = bench_hvp(args.repeats)
    lines.append("HVP, 784-128-128-10 MLP, batch 512, probe loss of Sec 4.2 (ms per product): " +
                 ", ".join(f"{name} {ms:.1f}" for name, ms in hvp.items()) + ".\n")
    print(lines[-1], flush=True)
    if not budget.allows("Lanczos density and per-example gradients"):
        return write()
    dim, one, many, reference = bench_lanczos(args.repeats, args.nv, args.reference_iters)
    base = one.get("PyHessian")
    lines.append(f"90-step Lanczos density, 784-512-512-10 MLP (d = {dim:,}), batch 512, probe loss; Ritz-value errors "
                 f"are the worst run's, relative to the spectral radius, against a {args.reference_iters}-step float64 "
                 f"fully reorthogonalised reference (top {reference[-1]:.4f}, bottom {reference[0]:.4f}):\n")
    lines += ["| runs | method | seconds | speed-up vs PyHessian | top error | bottom error |", "|---|---|---|---|---|---|"]
    for runs, table in ((1, one), (args.nv, many)):
        for name, row in table.items():
            label = {"ours": "common.science.hessian (lanczos" + ("_batched)" if runs > 1 else ")"),
                     "PyHessian": "PyHessian 0.1 `density`",
                     "old reimplementation": "extra: old reimplementation of PyHessian's loop, fresh graph per product"}[name]
            ratio = f"**{table['PyHessian']['seconds'] / row['seconds']:.2f}x**" if "PyHessian" in table else "n/a"
            lines.append(f"| {runs} | {label} | {row['seconds']:.1f} | {ratio} | {row['top_err']:.1e} | "
                         f"{row['bottom_err']:.1e} |")
    if base is None:
        lines.append("\nPyHessian is not installed (`pip install pyhessian`), so it was not compared.")
    lines[-1] += f"\nLoad average {os.getloadavg()[0]:.1f}.\n"
    print("\n".join(lines[-8:]), flush=True)
    for width in (128, 512):
        if not budget.allows(f"per-example gradients at width {width}"):
            continue
        vmap_s, loop_s = bench_per_example(args.repeats, width)
        lines.append(f"Per-example gradients, k = 512, 784-{width}-{width}-10 MLP: vmap(grad) {vmap_s * 1e3:.0f} ms, "
                     f"Python loop {loop_s * 1e3:.0f} ms: **{loop_s / vmap_s:.1f}x**.\n")
        print(lines[-1], flush=True)
    write()


if __name__ == "__main__":
    main()
