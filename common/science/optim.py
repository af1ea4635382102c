"""Optimizers with the paper's semantics that torch lacks.

Both are elementwise, so on parameters stacked along a leading axis (torch.func.stack_module_state) one
instance is exactly K independent optimizers; tests check that equivalence. Both, and ``torch.optim.SGD`` as
``make_optimizer`` builds it, take ``weight_decay`` as an L2 term ``weight_decay * p`` added to the gradient.
"""
import torch


class Adam(torch.optim.Optimizer):
    """Adam as in eq. 6 (optax convention): ``u = lr * m_hat / (sqrt(v_hat + eps_root) + eps)``.

    ``eps_root`` sits inside the square root, ``eps`` outside. With ``eps_root = 0`` this is ``torch.optim.Adam``.
    ``weight_decay`` adds ``weight_decay * p`` to the gradient (the L2 penalty of Sec 6.2).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, eps_root=0.0, weight_decay=0.0):
        if lr <= 0 or eps < 0 or eps_root < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid Adam hyperparameters: lr={lr}, betas={betas}, eps={eps}, eps_root={eps_root}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, eps_root=eps_root, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        scratch = self.__dict__.setdefault("_scratch", {})  # not in self.state, so checkpoints do not carry it
        for group in self.param_groups:
            (b1, b2), lr, eps, eps_root = group["betas"], group["lr"], group["eps"], group["eps_root"]
            fused = []  # (p, grad, m, v, step) of every parameter that torch's fused kernel takes
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0  # a Python int: bias correction needs no host sync
                    state["exp_avg"] = torch.zeros_like(p)  # in p's memory layout (see _contiguous_views)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                views = eps_root == 0 and _contiguous_views(p, p.grad, m, v)
                if views:
                    fused.append((*views, torch.full((), t, dtype=torch.float32, device=p.device)))
                    continue
                # One preallocated scratch tensor for the decayed gradient and then the denominator: a fresh one
                # per step cost a page-faulting allocation as large as the parameter.
                buffer = scratch.get(p)
                if buffer is None or buffer.shape != p.shape:
                    buffer = scratch[p] = torch.empty_like(p)
                grad = p.grad
                if group["weight_decay"] != 0:
                    grad = torch.add(grad, p, alpha=group["weight_decay"], out=buffer)
                m.lerp_(grad, 1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                denom = torch.div(v, 1 - b2**t, out=buffer).add_(eps_root).sqrt_().add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - b1**t))
            if fused:
                # torch's fused kernel, one call for every such parameter: one pass over p, grad, m and v instead
                # of seven, for an update that is memory-bound. Same formula (eq. 6 with eps_root = 0).
                params, grads, ms, vs, steps = map(list, zip(*fused))
                torch._fused_adam_(params, grads, ms, vs, [], steps, lr=lr, beta1=b1, beta2=b2,
                                   weight_decay=group["weight_decay"], eps=eps, amsgrad=False, maximize=False)
        return loss


def _contiguous_views(p, grad, m, v):
    """Contiguous views of the four tensors for ``torch._fused_adam_``, or None where it does not apply.

    The kernel copies non-contiguous tensors to contiguous ones and back. An elementwise update does not care
    about the logical shape, so tensors sharing one dense layout (the probe stores stacked weights in their
    gradients' transposed layout; ``zeros_like`` keeps it for m and v) are permuted into contiguous views instead.
    """
    if not (hasattr(torch, "_fused_adam_") and p.device.type in ("cpu", "cuda")
            and p.dtype in (torch.float32, torch.float64) and grad.dtype == p.dtype
            and p.stride() == grad.stride() == m.stride() == v.stride()):
        return None
    order = sorted(range(p.dim()), key=lambda d: -p.stride(d))
    views = [x.permute(order) for x in (p, grad, m, v)]
    return views if views[0].is_contiguous() else None


class RMSProp(torch.optim.Optimizer):
    """RMSProp as DQN Zoo uses it (optax.rmsprop): eps inside the square root, optionally centered.

    ``v = decay * v + (1 - decay) * g^2``; centered also tracks ``m = decay * m + (1 - decay) * g`` and uses
    ``v - m^2``; the update is ``lr * g / sqrt(v [- m^2] + eps)``. Statistics start at zero, as in optax.
    The defaults are DQN Zoo's DQN / Double DQN: lr 2.5e-4, decay 0.95, eps ``0.01 / 32**2`` (its
    ``optimizer_epsilon``; about 9.8e-6, not ``(0.01 / 32)**2``), centered. ``weight_decay`` adds
    ``weight_decay * p`` to ``g`` (as ``optax.chain(optax.add_decayed_weights(wd), optax.rmsprop(...))``).
    """

    def __init__(self, params, lr=2.5e-4, decay=0.95, eps=0.01 / 32**2, centered=True, weight_decay=0.0):
        if lr <= 0 or eps < 0 or weight_decay < 0 or not 0 <= decay < 1:
            raise ValueError(f"invalid RMSProp hyperparameters: lr={lr}, decay={decay}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, decay=decay, eps=eps, centered=centered, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        for group in self.param_groups:
            decay, lr, eps = group["decay"], group["lr"], group["eps"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.zeros_like(p)
                    if group["centered"]:
                        state["grad_avg"] = torch.zeros_like(p)
            # One foreach call per operation over every parameter: the same elementwise arithmetic as a loop over
            # them, without a Python call per parameter and operation (most of a small network's step).
            grads = [p.grad for p in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            v = [self.state[p]["square_avg"] for p in params]
            torch._foreach_mul_(v, decay)
            torch._foreach_addcmul_(v, grads, grads, value=1 - decay)
            if group["centered"]:
                m = [self.state[p]["grad_avg"] for p in params]
                torch._foreach_lerp_(m, grads, 1 - decay)
                v = torch._foreach_addcmul(v, m, m, value=-1)
            denom = torch._foreach_add(v, eps)
            torch._foreach_sqrt_(denom)
            torch._foreach_addcdiv_(params, grads, denom, value=-lr)
        return loss


OPTIMIZERS = {"adam": Adam, "rmsprop": RMSProp, "sgd": torch.optim.SGD}


def make_optimizer(name, params, lr, *, weight_decay=0.0, **hyperparameters):
    """Build an optimizer by name ('adam', 'rmsprop' or 'sgd'); the probe reuses this to copy the agent's.

    ``weight_decay`` is the same L2 gradient term for all three. ``hyperparameters`` are that optimizer's own
    (Adam: betas, eps, eps_root; RMSProp: decay, eps, centered; SGD: momentum ...), so each keeps its own defaults
    and a hyperparameter of another optimizer is a TypeError rather than silently ignored.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, **hyperparameters)
