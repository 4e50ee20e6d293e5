"""ANIL, adapting named modules (MeLU), Meta-SGD, per-step learning rates, adaptation and
evaluation settings, and the non-meta baseline (joint training, fine-tuning)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import image_batch, regression_batch, small_conv_net, small_mlp
from torch.func import functional_call

from fastadapt.algorithms.maml import MAML
from fastadapt.algorithms.pretrained import Pretrained
from fastadapt.tasks.task import TaskBatch


def test_anil_adapts_only_the_head():
    model, batch = small_conv_net().double(), image_batch()
    learner = MAML(model, problem="classification", inner_lr=0.4, anil=True)
    assert learner.adapted_names == ["5.weight", "5.bias"]
    grads = torch.autograd.grad(learner.meta_loss(batch).loss, list(model.parameters()))
    # Reference: body fixed, head adapted per task, second order.
    params = dict(model.named_parameters())
    total = 0.0
    for i in range(batch.num_tasks):
        out = functional_call(model, params, (batch.support_x[i],))
        head = {k: params[k] for k in learner.adapted_names}
        g = torch.autograd.grad(
            F.cross_entropy(out, batch.support_y[i]), list(head.values()), create_graph=True
        )
        adapted = {**params, **{k: p - 0.4 * gi for (k, p), gi in zip(head.items(), g)}}
        total = total + F.cross_entropy(
            functional_call(model, adapted, (batch.query_x[i],)), batch.query_y[i]
        )
    expected = torch.autograd.grad(total / batch.num_tasks, list(params.values()))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, expected))


def test_anil_with_an_unknown_head_names_the_children():
    with pytest.raises(ValueError, match="matches no parameter"):
        MAML(small_mlp(), anil=True, head="classifier")


def test_adapt_changes_only_the_named_modules_with_exact_gradients():
    model, batch = small_mlp().double(), regression_batch()
    learner = MAML(model, inner_lr=0.1, inner_steps=2, adapt=["2", "4.bias"])
    assert learner.adapted_names == ["2.weight", "2.bias", "4.bias"]
    grads = torch.autograd.grad(learner.meta_loss(batch).loss, list(model.parameters()))
    # Reference: two second-order steps on those three tensors only, one task at a time.
    params = dict(model.named_parameters())
    total = 0.0
    for i in range(batch.num_tasks):
        adapted = dict(params)
        for _ in range(2):
            chosen = [adapted[k] for k in learner.adapted_names]
            loss = F.mse_loss(
                functional_call(model, adapted, (batch.support_x[i],)), batch.support_y[i]
            )
            g = torch.autograd.grad(loss, chosen, create_graph=True)
            adapted.update({k: p - 0.1 * gi for k, p, gi in zip(learner.adapted_names, chosen, g)})
        out = functional_call(model, adapted, (batch.query_x[i],))
        total = total + F.mse_loss(out, batch.query_y[i])
    expected = torch.autograd.grad(total / batch.num_tasks, list(params.values()))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, expected))
    # adapt=[head] is ANIL.
    anil = MAML(model, anil=True, inner_lr=0.1)
    head = MAML(model, adapt=["4"], inner_lr=0.1)
    assert anil.adapted_names == head.adapted_names == ["4.weight", "4.bias"]
    assert torch.equal(anil.meta_loss(batch).loss, head.meta_loss(batch).loss)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"adapt": ["9"]}, r"adapt names \['9'\], which match no parameter"),
        ({"adapt": "4"}, "must be a list of module names"),
        ({"adapt": []}, "must be a list of module names"),
        ({"adapt": ["4"], "anil": True}, "pass anil or adapt, not both"),
    ],
)
def test_bad_adapt_names_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MAML(small_mlp(), **kwargs)


def test_pretrained_trains_on_all_examples_and_fine_tunes_at_evaluation():
    model, batch = small_mlp().double(), regression_batch()
    mask = torch.ones(batch.query_x.shape[:2], dtype=torch.bool)
    mask[0, 3:] = False  # task 0 has 3 real query points
    padded = TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y, mask)
    learner = Pretrained(model, inner_lr=0.05, eval_inner_steps=3, report_steps=[0, 3])
    expected = torch.stack(
        [
            F.mse_loss(
                model(torch.cat([batch.support_x[i], batch.query_x[i][mask[i]]])),
                torch.cat([batch.support_y[i], batch.query_y[i][mask[i]]]),
            )
            for i in range(batch.num_tasks)
        ]
    ).mean()
    assert torch.allclose(learner.meta_loss(padded).loss, expected)
    # Evaluation is MAML's: step 0 is the global model, step 3 the fine-tuned one.
    maml = MAML(model, inner_lr=0.05, eval_inner_steps=3, report_steps=[0, 3])
    metrics, reference = learner.task_metrics(padded), maml.task_metrics(padded)
    assert all(torch.equal(metrics[k], reference[k]) for k in ("mse@0", "mse@3", "mse"))
    unadapted = ((model(batch.query_x) - batch.query_y) ** 2)[0, :3].mean()
    assert torch.allclose(metrics["mse@0"][0], unadapted)


def test_meta_sgd_learns_per_element_rates_with_exact_gradients():
    model, batch = small_mlp().double(), regression_batch()
    learner = MAML(model, inner_lr=0.05, meta_sgd=True).double()
    assert [lr.shape for lr in learner.inner_lrs] == [p.shape for p in model.parameters()]
    lrs = list(learner.inner_lrs)
    with torch.no_grad():
        for lr in lrs:
            lr.uniform_(0.01, 0.1)
    grads = torch.autograd.grad(learner.meta_loss(batch).loss, lrs + list(model.parameters()))
    # Reference (Meta-SGD Eq. 4): θ' = θ - α ∘ ∇L, gradient w.r.t. α and θ.
    params = dict(model.named_parameters())
    total = 0.0
    for i in range(batch.num_tasks):
        loss = F.mse_loss(functional_call(model, params, (batch.support_x[i],)), batch.support_y[i])
        g = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        adapted = {k: p - a * gi for (k, p), a, gi in zip(params.items(), lrs, g)}
        total = total + F.mse_loss(
            functional_call(model, adapted, (batch.query_x[i],)), batch.query_y[i]
        )
    expected = torch.autograd.grad(total / batch.num_tasks, lrs + list(params.values()))
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(grads, expected))
    assert all(g.abs().sum() > 0 for g in grads[: len(lrs)])


def test_per_step_rates_have_one_rate_per_tensor_and_step():
    model, batch = small_mlp().double(), regression_batch()
    learner = MAML(model, inner_steps=3, inner_lr=0.05, per_step_lr=True).double()
    assert [tuple(lr.shape) for lr in learner.inner_lrs] == [(3,)] * 6
    grads = torch.autograd.grad(learner.meta_loss(batch).loss, list(learner.inner_lrs))
    assert all(g.shape == (3,) and (g != 0).all() for g in grads)


def test_eval_settings_are_separate_from_training():
    model, batch = small_mlp(), regression_batch(dtype=torch.float32)
    learner = MAML(
        model,
        inner_steps=1,
        inner_lr=0.01,
        eval_inner_steps=4,
        eval_inner_lr=0.05,
        report_steps=[0, 2],
    )
    metrics = learner.task_metrics(batch)
    assert set(metrics) == {"mse@0", "mse@2", "mse"}
    assert all(v.shape == (batch.num_tasks,) for v in metrics.values())
    # The headline is after eval_inner_steps=4 steps of 0.05: equal to adapt()'s predictor.
    predictions = torch.stack(
        [
            learner.adapt(batch.support_x[i], batch.support_y[i])(batch.query_x[i])
            for i in range(batch.num_tasks)
        ]
    )
    by_adapt = ((predictions - batch.query_y) ** 2).mean(dim=(1, 2))
    assert torch.allclose(metrics["mse"], by_adapt, atol=1e-6)
    # Step 0 is the unadapted model.
    unadapted = ((model(batch.query_x) - batch.query_y) ** 2).mean(dim=(1, 2))
    assert torch.allclose(metrics["mse@0"], unadapted, atol=1e-6)


def test_adaptation_reduces_support_loss_and_predictor_api():
    model, batch = small_conv_net(), image_batch(dtype=torch.float32)
    learner = MAML(model, problem="classification", inner_lr=0.1, eval_inner_steps=5)
    sx, sy = batch.support_x[0], batch.support_y[0]
    before = F.cross_entropy(model(sx), sy)
    predictor = learner.adapt(sx, sy)
    assert F.cross_entropy(predictor(sx), sy) < before
    probabilities = predictor.predict_proba(sx)
    assert torch.allclose(probabilities.sum(-1), torch.ones(len(sx)))
    assert torch.equal(predictor.predict(sx), probabilities.argmax(-1))
    assert not any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inner_steps": 0}, "inner_steps must be a positive integer"),
        ({"inner_steps": -2}, "inner_steps must be a positive integer"),
        ({"eval_inner_steps": 0}, "eval_inner_steps must be a positive integer"),
        ({"inner_lr": 0.0}, "inner_lr must be a positive number"),
        ({"report_steps": [-1, 2]}, "report_steps must be >= 0"),
        ({"problem": "ranking"}, "problem must be one of"),
        ({"meta_sgd": True, "eval_inner_lr": 0.1}, "eval_inner_lr cannot be set"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MAML(small_mlp(), **kwargs)
