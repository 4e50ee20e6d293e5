"""Trust-region policy optimisation step (Schulman et al. 2015, "Trust Region Policy
Optimization", §6 and Appendix C), MAML's outer optimiser for RL (Finn et al. 2017, §5.3).

Minimise a surrogate loss ``L(θ)`` subject to ``KL(θ_old, θ) ≤ δ``: the step direction
``s = H⁻¹ g`` is found by conjugate gradient with Hessian-vector products of the KL
(``H v = ∇(∇KL · v)``, damped by ``c v``), scaled to the trust region's boundary by
``√(2δ / sᵀHs)``, and shrunk by backtracking until the surrogate improves and the KL is
within ``δ``. For MAML both the loss and the KL are those of the adapted policy, so ``H``
is the Hessian of the second-order meta-objective's KL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: ``(differentiable) -> (surrogate loss, KL to the policy before the step)``, both scalars;
#: ``differentiable=False`` (line-search candidates) needs no graph beyond the values.
LossAndKL = Callable[[bool], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TRPOStats:
    """What a step did: the surrogate before and after, the KL after, the step fraction
    accepted (0 when every candidate was refused and the parameters were kept)."""

    loss_before: float
    loss_after: float
    kl: float
    step_fraction: float


def conjugate_gradient(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iterations: int = 10,
    tolerance: float = 1e-10,
) -> torch.Tensor:
    """Approximately solve ``H x = b`` for a symmetric positive-definite ``H`` given as the
    product ``hvp(v) = H v`` (Hestenes & Stiefel 1952)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iterations):
        hp = hvp(p)
        alpha = rr / (p @ hp)
        x = x + alpha * p
        r = r - alpha * hp
        new_rr = r @ r
        if new_rr < tolerance:
            break
        p = r + (new_rr / rr) * p
        rr = new_rr
    return x


def trpo_step(
    params: Sequence[nn.Parameter],
    loss_and_kl: LossAndKL,
    *,
    max_kl: float = 0.01,
    cg_iters: int = 10,
    cg_damping: float = 1e-5,
    backtrack: float = 0.8,
    max_backtracks: int = 15,
) -> TRPOStats:
    """Update ``params`` in place by one TRPO step on ``loss_and_kl``.

    ``loss_and_kl`` is evaluated once differentiably (at the current parameters, where the
    KL and its gradient are zero) and once per line-search candidate.
    """
    params = list(params)
    loss, kl = loss_and_kl(True)
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    g = torch.cat([grad.reshape(-1) for grad in grads])
    kl_grads = torch.autograd.grad(kl, params, create_graph=True)
    flat_kl_grad = torch.cat([grad.reshape(-1) for grad in kl_grads])

    def hvp(vector: torch.Tensor) -> torch.Tensor:
        products = torch.autograd.grad(flat_kl_grad @ vector, params, retain_graph=True)
        return torch.cat([p.reshape(-1) for p in products]) + cg_damping * vector

    direction = conjugate_gradient(hvp, g.detach(), cg_iters)
    curvature = 0.5 * (direction @ hvp(direction)).detach()
    step = direction * torch.sqrt(max_kl / curvature.clamp_min(1e-12))
    loss_before = loss.item()
    old = [p.detach().clone() for p in params]
    for k in range(max_backtracks):
        fraction = backtrack**k
        _assign(params, old, step, fraction)
        candidate_loss, candidate_kl = (value.item() for value in loss_and_kl(False))
        if candidate_loss < loss_before and candidate_kl <= max_kl:
            return TRPOStats(loss_before, candidate_loss, candidate_kl, fraction)
    _assign(params, old, step, 0.0)
    return TRPOStats(loss_before, loss_before, 0.0, 0.0)


def _assign(
    params: list[nn.Parameter], old: list[torch.Tensor], step: torch.Tensor, fraction: float
) -> None:
    offset = 0
    with torch.no_grad():
        for param, start in zip(params, old):
            size = param.numel()
            param.copy_(start - fraction * step[offset : offset + size].view_as(param))
            offset += size
