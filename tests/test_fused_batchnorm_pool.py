"""The fused BatchNorm + max-pool + ReLU kernels equal PyTorch's operators, derivatives
included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastadapt.nn._kernel_build import SWITCH_VARIABLE
from fastadapt.nn.fused_batchnorm_pool import batchnorm_pool_relu, fused_batchnorm_pool_applies

EPS = 1e-5


def _reference(y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    normalised = F.batch_norm(y, None, None, gamma, beta, training=True, eps=EPS)
    return F.max_pool2d(normalised, 2).relu()


def _inputs(
    images: int, channels: int, height: int, width: int, *, seed: int = 0, dtype=torch.float64
):
    g = torch.Generator().manual_seed(seed)
    y = 3 * torch.randn(images, channels, height, width, generator=g, dtype=dtype) + 1
    y = y.contiguous(memory_format=torch.channels_last)
    gamma = torch.randn(channels, generator=g, dtype=dtype)  # negative scales included
    beta = torch.randn(channels, generator=g, dtype=dtype)
    return y.requires_grad_(), gamma.requires_grad_(), beta.requires_grad_()


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SWITCH_VARIABLE, raising=False)


@pytest.mark.parametrize(
    ("images", "channels", "height", "width", "dtype"),
    [
        (6, 8, 14, 14, torch.float64),
        (3, 16, 7, 7, torch.float64),  # odd sides: the last row and column only in the stats
        (2, 24, 3, 5, torch.float64),
        (75, 64, 14, 14, torch.float32),
    ],
)
def test_forward_and_first_derivatives_equal_the_operators(images, channels, height, width, dtype):
    y, gamma, beta = _inputs(images, channels, height, width, dtype=dtype)
    assert fused_batchnorm_pool_applies(y, gamma)
    ours, reference = batchnorm_pool_relu(y, gamma, beta, EPS), _reference(y, gamma, beta)
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(ours, reference, **tolerance)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    upstream = torch.randn_like(reference)
    grads = [
        torch.autograd.grad((out * upstream).sum(), (y, gamma, beta)) for out in (ours, reference)
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **tolerance)


def test_second_derivatives_equal_the_operators() -> None:
    """A MAML-style second-order quantity: the gradient of a function of the first gradient,
    here through the recomputed operators of a ``create_graph`` backward."""
    y, gamma, beta = _inputs(4, 8, 6, 6, seed=1)
    target = torch.randn(4, 8, 3, 3, dtype=torch.float64)

    def second_order(block) -> list[torch.Tensor]:
        loss = ((block(y, gamma, beta) - target) ** 2).sum()
        grads = torch.autograd.grad(loss, (y, gamma, beta), create_graph=True)
        penalty = sum((g**2).sum() for g in grads)
        return [*grads, *torch.autograd.grad(penalty, (y, gamma, beta))]

    fused = second_order(lambda *args: batchnorm_pool_relu(*args, EPS))
    for ours, reference in zip(fused, second_order(_reference), strict=True):
        torch.testing.assert_close(ours, reference)


def test_gradcheck_by_finite_differences() -> None:
    y, gamma, beta = _inputs(2, 8, 4, 4, seed=2)

    def block(y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return batchnorm_pool_relu(y, gamma, beta, EPS)

    assert torch.autograd.gradcheck(block, (y, gamma, beta))
    assert torch.autograd.gradgradcheck(block, (y, gamma, beta))


def test_ties_and_nan_behave_as_in_the_operators() -> None:
    y = torch.zeros(2, 8, 4, 4, dtype=torch.float64)
    y[0, :, :2, :2] = 1.0  # a tie across a whole window
    y = y.contiguous(memory_format=torch.channels_last).requires_grad_()
    gamma, beta = torch.ones(8, dtype=torch.float64), torch.full((8,), 0.5, dtype=torch.float64)
    ours, reference = batchnorm_pool_relu(y, gamma, beta, EPS), _reference(y, gamma, beta)
    torch.testing.assert_close(ours, reference)
    grads = [torch.autograd.grad(out.sum(), y)[0] for out in (ours, reference)]
    torch.testing.assert_close(grads[0], grads[1])
    with torch.no_grad():
        poisoned = y.detach().clone()
        poisoned[1, 0, 3, 3] = float("nan")
    torch.testing.assert_close(
        batchnorm_pool_relu(poisoned, gamma, beta, EPS),
        _reference(poisoned, gamma, beta),
        equal_nan=True,
    )


def test_no_affine_parameters_mean_one_and_zero() -> None:
    y, _, _ = _inputs(3, 8, 6, 6, seed=3)
    ones, zeros = torch.ones(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    torch.testing.assert_close(batchnorm_pool_relu(y, None, None, EPS), _reference(y, ones, zeros))


def test_inputs_it_does_not_take_go_to_the_operators(monkeypatch: pytest.MonkeyPatch) -> None:
    y, gamma, _ = _inputs(2, 8, 4, 4)
    assert fused_batchnorm_pool_applies(y, gamma)
    assert not fused_batchnorm_pool_applies(y[:, :6], gamma[:6])  # channels not a multiple of 8
    assert not fused_batchnorm_pool_applies(y[..., :1, :], gamma)  # smaller than the window
    assert not fused_batchnorm_pool_applies(y.bfloat16(), gamma.bfloat16())
    assert not fused_batchnorm_pool_applies(y.float(), gamma)  # mixed dtypes
    monkeypatch.setenv(SWITCH_VARIABLE, "0")
    assert not fused_batchnorm_pool_applies(y, gamma)
