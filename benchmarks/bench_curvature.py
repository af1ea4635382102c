"""Curvature tools against the simplest correct versions, timed in the same run; appends to RESULTS.md.

1. Hessian-vector products on a 784-128-128-10 MLP, batch 512: double backward through a gradient graph built once
   (``common.hessian.hessian_matvec``), a fresh double backward per product, and torch.func ``jvp(grad)``.
2. A 90-step Lanczos density on a 784-512-512-10 MLP, batch 512: ``common.hessian`` against PyHessian's manner
   (a fresh double-backward HVP per step, float32 vectors kept as per-parameter lists, reorthogonalisation by a
   Python loop over the stored vectors), from the same start vector; same nodes checked.
3. Per-example gradients for k = 512 (``common.grad_cov.per_example_grads``) against a loop of backward passes.

Timings alternate between the contenders and report the median, because these CPUs are shared. One torch thread
by default: on 2 cores shared with other jobs, two OpenMP threads stall each other (an HVP of section 1 took
20-520 ms with 2 threads against 4 ms with 1 on a loaded machine).
    python benchmarks/bench_curvature.py [--repeats 3] [--threads 1] [--no-write]
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
from common.grad_cov import per_example_grads  # noqa: E402
from common.hessian import hessian_matvec, lanczos  # noqa: E402
from common.networks import build_network  # noqa: E402


def setup(width, batch=512, seed=0):
    torch.manual_seed(seed)
    net = build_network("mlp", (1, 28, 28), 10, width=width)
    x = torch.rand(batch, 1, 28, 28)
    eps = torch.randn(batch, 10)
    return net, x, eps


def probe_loss(out, eps):
    """The probe loss of Sec 4.2: mean over the batch of ||f(x) - sg(f(x)) + eps||^2."""
    return (out - out.detach() + eps).square().sum(-1).mean()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


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
    v = torch.randn(dim)
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


def pyhessian_lanczos(loss_fn, params, num_iters, start):
    """PyHessian's density loop (one run): fresh HVP per step, list-of-tensors vectors, Python-loop Gram-Schmidt."""
    def group_product(xs, ys):
        return sum(torch.sum(a * b) for a, b in zip(xs, ys))

    def normalise(vs):
        norm = torch.sqrt(group_product(vs, vs))
        return [v / norm for v in vs]  # PyHessian adds 1e-6 to the norm; left out to compare nodes exactly

    def hvp(vs):
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        return [h.detach() for h in torch.autograd.grad(grads, params, grad_outputs=vs)]

    v = normalise([c.view_as(p).float() for c, p in zip(start.split([p.numel() for p in params]), params)])
    stored, alphas, betas = [v], [], []
    for i in range(num_iters):
        if i == 0:
            w = hvp(v)
            alpha = group_product(w, v)
            w = [a - alpha * b for a, b in zip(w, v)]
        else:
            beta = torch.sqrt(group_product(w, w))
            betas.append(beta.item())
            v = w
            for u in stored:  # reorthogonalise against every stored vector, one at a time
                v = [a - group_product(v, u) * b for a, b in zip(v, u)]
            v = normalise(v)
            stored.append(v)
            w = hvp(v)
            alpha = group_product(w, v)
            w = [a - alpha * b - beta * c for a, b, c in zip(w, v, stored[-2])]
        alphas.append(alpha.item())
    T = torch.diag(torch.tensor(alphas)) + torch.diag(torch.tensor(betas), 1) + torch.diag(torch.tensor(betas), -1)
    nodes, vectors = torch.linalg.eigh(T.double())
    return nodes, vectors[0] ** 2


def bench_lanczos(repeats, num_iters=90):
    net, x, eps = setup(512)
    params = list(net.parameters())
    loss_fn = lambda: probe_loss(net(x), eps)  # noqa: E731
    dim = sum(p.numel() for p in params)
    start = torch.randn(dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hvp_seconds = []

    def ours():
        matvec, _ = hessian_matvec(loss_fn, params)

        def timed_matvec(v):
            seconds, result = timed(lambda: matvec(v))
            hvp_seconds.append(seconds)
            return result

        return lanczos(timed_matvec, dim, num_iters, seed=0)

    out = interleaved({"ours": ours, "PyHessian manner": lambda: pyhessian_lanczos(loss_fn, params, num_iters, start)},
                      repeats)
    ours_nodes, baseline_nodes = out["ours"][1][0], out["PyHessian manner"][1][0]
    scale = ours_nodes.abs().max()
    return {"dim": dim, "ours_s": out["ours"][0], "baseline_s": out["PyHessian manner"][0],
            "ours_hvp_s": sum(hvp_seconds) / repeats,
            "max_node_diff_rel": ((ours_nodes - baseline_nodes).abs().max() / scale).item(),
            "top_rel": ((ours_nodes[-1] - baseline_nodes[-1]).abs() / scale).item(),
            "top": ours_nodes[-1].item(), "bottom": ours_nodes[0].item()}


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
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"\n## Curvature tools\n",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
             f"{platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads), load average {os.getloadavg()[0]:.1f}; "
             f"torch {torch.__version__}, Python {platform.python_version()}; median of {args.repeats} alternating "
             f"repeats (`python benchmarks/bench_curvature.py --repeats {args.repeats}`).\n"]
    hvp = bench_hvp(args.repeats)
    lines.append("HVP, 784-128-128-10 MLP, batch 512, probe loss of Sec 4.2 (ms per product): " +
                 ", ".join(f"{name} {ms:.1f}" for name, ms in hvp.items()) + ".\n")
    print(lines[-1], flush=True)
    lz = bench_lanczos(args.repeats)
    lines.append(f"90-step Lanczos density, 784-512-512-10 MLP (d = {lz['dim']:,}), batch 512: ours "
                 f"{lz['ours_s']:.1f} s (of which HVPs {lz['ours_hvp_s']:.1f} s), PyHessian manner "
                 f"{lz['baseline_s']:.1f} s: **{lz['baseline_s'] / lz['ours_s']:.2f}x**. Same nodes: largest "
                 f"difference {lz['max_node_diff_rel']:.1e} of the spectral radius (float64 vs float32 vectors), "
                 f"top eigenvalue {lz['top']:.4f} (difference {lz['top_rel']:.1e}), bottom {lz['bottom']:.4f}.\n")
    print(lines[-1], flush=True)
    for width in (128, 512):
        vmap_s, loop_s = bench_per_example(args.repeats, width)
        lines.append(f"Per-example gradients, k = 512, 784-{width}-{width}-10 MLP: vmap(grad) {vmap_s * 1e3:.0f} ms, "
                     f"Python loop {loop_s * 1e3:.0f} ms: **{loop_s / vmap_s:.1f}x**.\n")
        print(lines[-1], flush=True)
    if not args.no_write:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"), "a") as f:
            f.write("\n".join(lines))


if __name__ == "__main__":
    main()
