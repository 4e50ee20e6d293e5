"""The counter-based dropout kernel: PyTorch's dropout distribution, one mask per call shared
by every derivative, reproducible from the global seed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastadapt.nn import fused_dropout
from fastadapt.nn._kernel_build import SWITCH_VARIABLE
from fastadapt.nn.conv4 import Conv4
from fastadapt.nn.fused_dropout import Dropout, dropout


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SWITCH_VARIABLE, raising=False)


def _maps(dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(40, 16, 9, 7, generator=g, dtype=torch.float64) + 0.5  # no zeros
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


def _within_binomial_bounds(kept: int, trials: int, probability: float) -> bool:
    """``kept`` successes of ``trials`` fit ``probability`` within six standard deviations."""
    spread = 6 * math.sqrt(trials * probability * (1 - probability))
    return abs(kept - trials * probability) <= spread


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_kept_values_are_scaled_and_the_drop_rate_is_p(dtype: torch.dtype, p: float) -> None:
    x = _maps(dtype)
    out = dropout(x, p)
    assert out.dtype == dtype and out.stride() == x.stride()  # channels last kept
    kept = out != 0
    torch.testing.assert_close(out[kept], (x[kept].double() / (1 - p)).to(dtype))
    assert _within_binomial_bounds(int(kept.sum()), x.numel(), 1 - p)


def test_neighbouring_values_are_dropped_independently() -> None:
    p = 0.3
    kept = dropout(torch.ones(1_000_001), p) != 0
    both = kept[:-1] & kept[1:]  # words from the same draw and from consecutive draws
    assert _within_binomial_bounds(int(both.sum()), both.numel(), (1 - p) ** 2)
    another = dropout(torch.ones(1_000_001), p) != 0
    assert _within_binomial_bounds(int((kept & another).sum()), kept.numel(), (1 - p) ** 2)


def test_masks_follow_the_global_seed_and_not_the_thread_count() -> None:
    x = _maps()
    threads = torch.get_num_threads()
    try:
        torch.manual_seed(7)
        torch.set_num_threads(1)
        first, second = dropout(x, 0.2), dropout(x, 0.2)
        torch.manual_seed(7)
        torch.set_num_threads(2)
        again = dropout(x, 0.2)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


def test_the_gradient_is_the_forward_mask_for_any_upstream_layout() -> None:
    x = _maps(torch.float64).requires_grad_()
    out = dropout(x, 0.4)
    factor = (out / x).detach()  # the mask times 1 / (1 - p)
    (through_sum,) = torch.autograd.grad(out.sum(), x, retain_graph=True)  # expanded: stride 0
    upstream = torch.randn(40, 9, 7, 16, dtype=torch.float64).permute(0, 3, 1, 2)
    (through_other_layout,) = torch.autograd.grad(out, x, upstream.contiguous())
    torch.testing.assert_close(through_sum, factor)
    torch.testing.assert_close(through_other_layout, factor * upstream)


def test_derivatives_of_every_order_pass_gradcheck() -> None:
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)

    def seeded(t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)  # the same mask at every evaluation of the finite differences
        return dropout(t, 0.3)

    assert torch.autograd.gradcheck(seeded, (x,))
    assert torch.autograd.gradgradcheck(seeded, (x,))


def test_non_dense_inputs_are_masked_as_their_contiguous_copy() -> None:
    x = _maps(torch.float64)[:, :, ::2]  # strided view
    torch.manual_seed(3)
    out = dropout(x, 0.25)
    torch.manual_seed(3)
    torch.testing.assert_close(out, dropout(x.contiguous(), 0.25))


def test_nan_stays_nan_as_in_pytorch() -> None:
    x = torch.full((10_000,), float("nan"))
    assert dropout(x, 0.5).isnan().all()
    assert F.dropout(x, 0.5).isnan().all()


def test_evaluation_zero_and_one_and_bad_probabilities() -> None:
    x = _maps()
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dropout probability p must be in"):
            dropout(x, p)


def test_switched_off_it_is_pytorchs_dropout(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _maps()
    monkeypatch.setenv(SWITCH_VARIABLE, "0")
    torch.manual_seed(5)
    ours = dropout(x, 0.3)
    torch.manual_seed(5)
    torch.testing.assert_close(ours, F.dropout(x, 0.3))


def test_under_vmap_it_falls_back_to_pytorchs_dropout() -> None:
    x = torch.ones(4, 1000)
    out = torch.vmap(lambda row: dropout(row, 0.5), randomness="different")(x)
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    assert not torch.equal(out[0], out[1])


def test_conv4_dropout_runs_the_kernel_and_keeps_the_state_dict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = Conv4(dropout=0.1)
    assert sum(isinstance(m, Dropout) for m in model.modules()) == 4
    assert model.state_dict().keys() == Conv4().state_dict().keys()
    calls = []
    kernel = fused_dropout._CounterDropout.apply

    def counted(*args):
        calls.append(1)
        return kernel(*args)

    monkeypatch.setattr(fused_dropout._CounterDropout, "apply", counted)
    x = torch.rand(6, 1, 28, 28)
    model(x).sum().backward()
    assert len(calls) == 8  # four blocks, forward and backward
    model.eval()
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    torch.testing.assert_close(first, model(x))


def test_a_failed_build_warns_and_pytorchs_dropout_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils import cpp_extension

    from fastadapt.nn import _kernel_build

    def no_compiler(**_: object) -> None:
        raise RuntimeError("no C++ compiler found")

    x = _maps()
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    _kernel_build.build_kernels.cache_clear()
    try:
        with pytest.warns(UserWarning, match="no C\\+\\+ compiler found.*other masks, slower"):
            torch.manual_seed(2)
            fallback = dropout(x, 0.3)
    finally:
        _kernel_build.build_kernels.cache_clear()
    torch.manual_seed(2)
    torch.testing.assert_close(fallback, F.dropout(x, 0.3))
