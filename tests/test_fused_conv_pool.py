"""The fused convolution + max-pool + ReLU kernels equal PyTorch's operators, derivatives
included; with the BatchNorm + max-pool + ReLU kernel, MAML through Conv-4 does too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt import MAML, TaskBatch
from fastadapt.nn import _kernel_build, fused_conv_pool
from fastadapt.nn._kernel_build import SWITCH_VARIABLE
from fastadapt.nn.conv4 import Conv4
from fastadapt.nn.folded_conv_block import folded_conv_block
from fastadapt.nn.fused_batchnorm_pool import batchnorm_pool_relu
from fastadapt.nn.fused_conv_pool import conv_pool_relu, fused_conv_pool_applies


def _reference(padded: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``relu(max_pool2d(conv2d(...), 2))`` per group of images, as PyTorch's operators compute
    it."""
    groups, out_channels, taps = weight.shape
    per_group = padded.shape[0] // groups
    kernels = weight.view(groups, out_channels, taps // 9, 3, 3)
    return torch.cat(
        [
            F.max_pool2d(
                F.conv2d(padded[t * per_group : (t + 1) * per_group], kernels[t], shift[t]), 2
            ).relu()
            for t in range(groups)
        ]
    )


def _inputs(
    groups: int,
    images: int,
    channels: int,
    height: int,
    width: int,
    seed: int = 0,
    out_channels: int = 8,
    dtype: torch.dtype = torch.float64,
):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(groups * images, channels, height, width, generator=g, dtype=dtype)
    weight = torch.randn(groups, out_channels, channels * 9, generator=g, dtype=dtype)
    shift = torch.randn(groups, out_channels, generator=g, dtype=dtype)
    return F.pad(x, (1, 1, 1, 1)), weight.requires_grad_(), shift.requires_grad_()


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SWITCH_VARIABLE, raising=False)


@pytest.mark.parametrize(
    ("groups", "channels", "height", "width"),
    [(1, 1, 28, 28), (1, 3, 9, 11), (3, 1, 6, 5), (2, 3, 4, 4)],
)
def test_forward_and_first_derivatives_equal_the_operators(
    groups: int, channels: int, height: int, width: int
) -> None:
    padded, weight, shift = _inputs(groups, 4, channels, height, width)
    assert fused_conv_pool_applies(padded, weight)
    ours, reference = conv_pool_relu(padded, weight, shift), _reference(padded, weight, shift)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    upstream = torch.randn_like(reference)
    grads = [
        torch.autograd.grad((out * upstream).sum(), (weight, shift)) for out in (ours, reference)
    ]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("out_channels", [40, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channel_tiles_and_their_remainder_in_both_precisions(
    out_channels: int, dtype: torch.dtype
) -> None:
    """The kernels take channels in tiles of several vectors and the rest one vector at a time
    (40 channels: a tile and a remainder in float32, two tiles and a remainder in float64)."""
    padded, weight, shift = _inputs(2, 3, 1, 10, 10, seed=3, out_channels=out_channels, dtype=dtype)
    reference_inputs = [padded.double()] + [
        t.detach().double().requires_grad_() for t in (weight, shift)
    ]
    ours, reference = conv_pool_relu(padded, weight, shift), _reference(*reference_inputs)
    tolerance = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(ours.double(), reference, **tolerance)
    upstream = torch.randn(reference.shape, dtype=torch.float64)
    grads = torch.autograd.grad(
        (ours.square() * upstream.to(dtype)).sum(), (weight, shift), create_graph=True
    )
    expected = torch.autograd.grad(
        (reference.square() * upstream).sum(), reference_inputs[1:], create_graph=True
    )
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a.double(), b, **tolerance)
    second = torch.autograd.grad(grads[0].square().sum(), weight)[0]
    expected_second = torch.autograd.grad(expected[0].square().sum(), reference_inputs[1])[0]
    torch.testing.assert_close(second.double(), expected_second, **tolerance)


def test_second_derivatives_equal_the_operators() -> None:
    """A MAML-style second-order quantity: the gradient of a function of the first gradient."""
    padded, weight, shift = _inputs(3, 4, 1, 8, 8, seed=1)
    target = torch.randn(12, 8, 4, 4, dtype=torch.float64)

    def second_order(conv) -> list[torch.Tensor]:
        loss = ((conv(padded, weight, shift) - target) ** 2).sum()
        grads = torch.autograd.grad(loss, (weight, shift), create_graph=True)
        penalty = sum((g**2).sum() for g in grads)
        return [*grads, *torch.autograd.grad(penalty, (weight, shift))]

    for ours, reference in zip(second_order(conv_pool_relu), second_order(_reference), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)


def test_gradcheck_to_third_order_by_finite_differences() -> None:
    padded, weight, shift = _inputs(2, 2, 1, 4, 6, seed=2)

    def cubed(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return conv_pool_relu(padded, w, s) ** 3

    assert torch.autograd.gradcheck(cubed, (weight, shift))
    assert torch.autograd.gradgradcheck(cubed, (weight, shift))


def test_ties_go_to_the_first_maximum_and_nan_propagates_as_in_max_pool() -> None:
    padded = F.pad(torch.zeros(2, 1, 4, 4, dtype=torch.float64), (1, 1, 1, 1))  # all windows tie
    padded[1, 0, 2, 3] = float("nan")
    # One group per image: the NaN stays out of the tied image's gradients.
    weight = torch.ones(2, 8, 9, dtype=torch.float64, requires_grad=True)
    shift = torch.zeros(2, 8, dtype=torch.float64, requires_grad=True)
    ours, reference = conv_pool_relu(padded, weight, shift), _reference(padded, weight, shift)
    torch.testing.assert_close(ours, reference, equal_nan=True)
    finite = ours[0].isfinite().all()
    assert finite and ours[1].isnan().any()
    grads = [torch.autograd.grad(out[0].sum(), weight)[0][0] for out in (ours, reference)]
    assert grads[0].isfinite().all()
    torch.testing.assert_close(grads[0], grads[1])


def test_inputs_it_does_not_take_go_to_the_operators(monkeypatch: pytest.MonkeyPatch) -> None:
    padded, weight, _ = _inputs(1, 2, 1, 6, 6)
    assert fused_conv_pool_applies(padded, weight)
    assert not fused_conv_pool_applies(padded.requires_grad_(), weight)  # no input gradient
    padded = padded.detach()
    assert not fused_conv_pool_applies(padded, weight[:, :6])  # channels not a multiple of 8
    assert not fused_conv_pool_applies(padded.bfloat16(), weight.bfloat16())
    monkeypatch.setenv(SWITCH_VARIABLE, "0")
    assert not fused_conv_pool_applies(padded, weight)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_through_conv4_with_and_without_the_kernels(
    fused: bool, first_order: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Support (batched over tasks) and query (per task) passes, through both fused kernels or
    none, give the textbook stack's meta-gradient (second order: looped support sets take the
    BatchNorm kernel's create_graph backward)."""
    if not fused:
        monkeypatch.setenv(SWITCH_VARIABLE, "0")
    torch.manual_seed(4)
    model = Conv4(1, hidden=8, ways=3, image_size=16).double()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.normal_()
                module.bias.normal_()
    plain = _textbook_copy(model)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 9, 1, 16, 16, generator=g, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 2] * 3] * 2)
    batch = TaskBatch(images[:, :3], labels[:, :3], images[:, 3:], labels[:, 3:])
    calls, norm_calls = [], []
    counted = _counting(conv_pool_relu, calls)
    monkeypatch.setattr(fused_conv_pool, "conv_pool_relu", counted)
    monkeypatch.setattr("fastadapt.nn.folded_conv_block.conv_pool_relu", counted)
    counted_norm = _counting(batchnorm_pool_relu, norm_calls)
    monkeypatch.setattr("fastadapt.nn.conv4.batchnorm_pool_relu", counted_norm)
    grads = []
    for net, mode in ((model, "vmap"), (model, "loop"), (plain, "loop")):
        learner = MAML(net, problem="classification", inner_steps=2, inner_lr=0.4,
                       first_order=first_order, batch_mode=mode)  # fmt: skip
        grads.append(torch.autograd.grad(learner.meta_loss(batch).loss, list(net.parameters())))
    assert bool(calls) == fused and bool(norm_calls) == fused
    for ours_vmap, ours_loop, reference in zip(*grads, strict=True):
        torch.testing.assert_close(ours_vmap, reference, rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(ours_loop, reference, rtol=1e-7, atol=1e-8)


def test_a_failed_build_warns_once_and_the_block_still_computes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torch.utils import cpp_extension

    def no_compiler(**_: object) -> None:
        raise RuntimeError("no C++ compiler found")

    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    weight = torch.randn(8, 1, 3, 3, dtype=torch.float64)
    expected = folded_conv_block(x, weight, None, None, None, eps=1e-5, padding=1)
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    _kernel_build.build_kernels.cache_clear()
    try:
        with pytest.warns(UserWarning, match="no C\\+\\+ compiler found.*same results"):
            assert not fused_conv_pool_applies(x, weight.view(8, 9))
        fallback = folded_conv_block(x, weight, None, None, None, eps=1e-5, padding=1)
    finally:
        _kernel_build.build_kernels.cache_clear()
    torch.testing.assert_close(fallback, expected, rtol=1e-12, atol=1e-12)


def _counting(function, calls: list):
    def counted(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return counted


def _textbook_copy(model: Conv4) -> nn.Sequential:
    """The textbook ``conv → BatchNorm → ReLU → pool`` stack with ``model``'s parameters."""
    blocks = []
    for block in list(model)[:4]:
        conv = block[0]
        plain_block = nn.Sequential(
            nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1),
            nn.BatchNorm2d(conv.out_channels, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ).double()
        plain_block.load_state_dict(block.state_dict())
        blocks.append(plain_block)
    head = nn.Linear(model[-1].in_features, model[-1].out_features).double()
    head.load_state_dict(model[-1].state_dict())
    return nn.Sequential(*blocks, nn.Flatten(), head)
