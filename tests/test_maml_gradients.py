"""The engine's meta-gradient equals an unbatched float64 reference and finite differences."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import image_batch, regression_batch, small_conv_net, small_mlp
from torch.func import functional_call, grad, vmap

from fastadapt.algorithms.maml import MAML

CASES = {
    "mlp": (small_mlp, regression_batch, "regression", 0.1),
    "conv-bn": (small_conv_net, image_batch, "classification", 0.4),
}


def _loss(problem, output, target):
    return (
        F.mse_loss(output, target) if problem == "regression" else F.cross_entropy(output, target)
    )


def reference_meta_gradient(model, batch, problem, lr, steps, first_order):
    """MAML Eq. 1-3 task by task, with plain autograd and no batching at all."""
    params = dict(model.named_parameters())
    total = 0.0
    for i in range(batch.num_tasks):
        adapted = params
        for _ in range(steps):
            out = functional_call(model, adapted, (batch.support_x[i],))
            grads = torch.autograd.grad(
                _loss(problem, out, batch.support_y[i]),
                list(adapted.values()),
                create_graph=not first_order,
            )
            adapted = {k: p - lr * g for (k, p), g in zip(adapted.items(), grads)}
        out = functional_call(model, adapted, (batch.query_x[i],))
        total = total + _loss(problem, out, batch.query_y[i])
    return torch.autograd.grad(total / batch.num_tasks, list(params.values()))


def _max_error(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("mode", ["vmap", "loop"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_matches_unbatched_reference(case, mode, first_order, steps):
    make_model, make_batch, problem, lr = CASES[case]
    model, batch = make_model().double(), make_batch()
    learner = MAML(
        model,
        problem=problem,
        inner_steps=steps,
        inner_lr=lr,
        first_order=first_order,
        batch_mode=mode,
    )
    ours = torch.autograd.grad(learner.meta_loss(batch).loss, list(model.parameters()))
    expected = reference_meta_gradient(model, batch, problem, lr, steps, first_order)
    assert _max_error(ours, expected) < 1e-10


def test_first_and_second_order_differ():
    """Guards the two tests above against a second-order path that silently drops terms."""
    model, batch = small_conv_net().double(), image_batch()
    grads = {}
    for first_order in (False, True):
        learner = MAML(model, problem="classification", inner_lr=0.4, first_order=first_order)
        grads[first_order] = torch.autograd.grad(
            learner.meta_loss(batch).loss, list(model.parameters())
        )
    assert _max_error(grads[False], grads[True]) > 1e-4


def test_naive_vmap_of_grad_is_wrong_with_adapted_batchnorm():
    """The fault the engine is designed around: ``vmap(grad(f))`` through stock BatchNorm.

    If this starts failing, PyTorch fixed functorch issue 534 and the note in
    ``fastadapt.nn.batching`` can be relaxed; the engine itself does not depend on it.
    """
    model, batch = small_conv_net().double(), image_batch()
    params = dict(model.named_parameters())

    def loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def task(sx, sy, qx, qy):
        g = grad(loss)(params, sx, sy)
        return loss({k: params[k] - 0.4 * g[k] for k in params}, qx, qy)

    naive = torch.autograd.grad(
        vmap(task)(batch.support_x, batch.support_y, batch.query_x, batch.query_y).mean(),
        list(params.values()),
    )
    expected = reference_meta_gradient(model, batch, "classification", 0.4, 1, False)
    assert _max_error(naive, expected) > 1e-6


def _central_difference(f, vector, eps=1e-6):
    grad_estimate = torch.zeros_like(vector)
    for j in range(vector.numel()):
        step = torch.zeros_like(vector)
        step[j] = eps
        grad_estimate[j] = (f(vector + step) - f(vector - step)) / (2 * eps)
    return grad_estimate


def _unflatten(model, vector):
    shapes = [(n, p.shape) for n, p in model.named_parameters()]
    chunks = vector.split([s.numel() for _, s in shapes])
    return {name: chunk.view(shape) for (name, shape), chunk in zip(shapes, chunks)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_second_order_meta_gradient_agrees_with_finite_differences(case):
    """∇_θ of the meta-objective (MAML Eq. 3) against central differences of it."""
    make_model, make_batch, problem, lr = CASES[case]
    model, batch = make_model().double(), make_batch(tasks=2)
    learner = MAML(model, problem=problem, inner_lr=lr, inner_steps=2)
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    ours = torch.cat(
        [
            g.flatten()
            for g in torch.autograd.grad(learner.meta_loss(batch).loss, list(model.parameters()))
        ]
    )

    def meta_objective(vector):
        params = {f"model.{k}": v for k, v in _unflatten(model, vector).items()}
        with torch.no_grad():
            return functional_call(learner, params, (batch,)).loss

    assert torch.allclose(ours, _central_difference(meta_objective, theta), atol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_first_order_meta_gradient_agrees_with_finite_differences(case):
    """First-order MAML: the query-loss gradient at the adapted θ', by central differences."""
    make_model, make_batch, problem, lr = CASES[case]
    model, batch = make_model().double(), make_batch(tasks=2)
    learner = MAML(model, problem=problem, inner_lr=lr, first_order=True)
    ours = torch.cat(
        [
            g.flatten()
            for g in torch.autograd.grad(learner.meta_loss(batch).loss, list(model.parameters()))
        ]
    )
    *_, adapted = learner._inner_loop(batch.support_x, batch.support_y, 1, training=False)
    adapted = {k: v.detach() for k, v in adapted.items()}

    def query_loss_at_shift(shift):
        total = 0.0
        for i in range(batch.num_tasks):
            params = {k: adapted[k][i] + s for k, s in _unflatten(model, shift).items()}
            out = functional_call(model, params, (batch.query_x[i],))
            total = total + _loss(problem, out, batch.query_y[i])
        return total / batch.num_tasks

    zero = torch.zeros_like(ours)
    assert torch.allclose(ours, _central_difference(query_loss_at_shift, zero), atol=1e-6)
