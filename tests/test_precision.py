"""Mixed precision (``train.precision = "bfloat16"``): the backbone in bfloat16, the heads,
losses and batch statistics in float32, and the trainer's choice of context."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import TINY_RUN

from fastadapt import MAML, Conv4, MatchingNet, ProtoNet, TaskBatch, Versa
from fastadapt.config import load_preset
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.run import train_run
from fastadapt.errors import ConfigError
from fastadapt.nn.folded_conv_block import folded_conv_block
from fastadapt.nn.precision import float32_region, training_autocast, warn_if_unsupported

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def test_training_autocast_is_autocast_for_bfloat16_and_nothing_for_float32() -> None:
    with training_autocast(torch.device("cpu"), "bfloat16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with training_autocast(torch.device("cpu"), "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match=r"precision must be one of \['float32', 'bfloat16'\]"):
        training_autocast(torch.device("cpu"), "float16")


def test_float32_region_upcasts_and_switches_autocast_off_only_under_autocast() -> None:
    seen = {}

    @float32_region
    def head(x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["dtypes"] = (x.dtype, scale.dtype)
        return x @ x.T * scale

    x, scale = torch.ones(2, 3, dtype=torch.bfloat16), torch.ones((), dtype=torch.bfloat16)
    with torch.autocast(**BF16):
        out = head(x, scale=scale)
    assert seen == {"autocast": False, "dtypes": (torch.float32, torch.float32)}
    assert out.dtype == torch.float32
    head(x, scale=scale)  # no autocast: called as it is
    assert seen == {"autocast": False, "dtypes": (torch.bfloat16, torch.bfloat16)}


def _batch(tasks: int = 3, ways: int = 5, shots: int = 2, queries: int = 3) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(ways)
    return TaskBatch(
        torch.rand(tasks, ways * shots, 1, 28, 28, generator=g),
        labels.repeat_interleave(shots).repeat(tasks, 1),
        torch.rand(tasks, ways * queries, 1, 28, 28, generator=g),
        labels.repeat_interleave(queries).repeat(tasks, 1),
    )


LEARNERS = {
    "maml": lambda: MAML(Conv4(1, hidden=16, ways=5), problem="classification", inner_lr=0.4),
    "maml-vmap": lambda: MAML(
        Conv4(1, hidden=16, ways=5), problem="classification", inner_lr=0.4, batch_mode="vmap"
    ),
    "protonet": lambda: ProtoNet(Conv4(1, hidden=16)),
    "matching-fce": lambda: MatchingNet(Conv4(1, hidden=16), embedding_dim=16, fce=True),
    "versa": lambda: Versa(Conv4(1, hidden=16, ceil_mode=True), feature_dim=64),
}


@pytest.mark.parametrize("name", list(LEARNERS))
def test_bfloat16_meta_loss_is_float32_and_close_to_the_float32_one(name: str) -> None:
    torch.manual_seed(0)
    learner, batch = LEARNERS[name](), _batch()
    results = []
    for autocast in (False, True):
        learner.zero_grad()
        torch.manual_seed(1)  # the same VERSA noise in both
        with torch.autocast(**BF16, enabled=autocast):
            output = learner.meta_loss(batch)
        output.loss.backward()
        gradient = torch.cat([p.grad.flatten() for p in learner.parameters() if p.grad is not None])
        results.append((output.loss.detach(), gradient))
    (loss, gradient), (mixed_loss, mixed_gradient) = results
    assert mixed_loss.dtype == torch.float32
    assert mixed_loss.item() == pytest.approx(loss.item(), rel=2e-2)
    # bfloat16 keeps 8 bits of mantissa: the meta-gradient keeps its direction.
    assert torch.nn.functional.cosine_similarity(gradient, mixed_gradient, dim=0) > 0.95


def test_folded_block_under_autocast_is_as_accurate_as_the_plain_block() -> None:
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.rand(64, 1, 14, 14, generator=g)  # far from zero mean
    weight, bias = torch.randn(8, 1, 3, 3, generator=g), torch.randn(8, generator=g)

    def plain() -> torch.Tensor:
        conv = torch.nn.functional.conv2d(x, weight, bias, padding=1)
        return torch.nn.functional.batch_norm(conv, None, None, training=True).relu().float()

    exact = plain()
    with torch.autocast(**BF16):
        folded = folded_conv_block(x, weight, bias, None, None, eps=1e-5, padding=1, pool=False)
        mixed = plain()
    assert folded.dtype == torch.bfloat16
    folded_error = (folded.float() - exact).abs().mean()
    assert 0 < folded_error < 1.5 * (mixed - exact).abs().mean()


def test_bfloat16_training_run_keeps_float32_weights(fake_omniglot, tmp_path) -> None:
    out = tmp_path / "run"
    config = load_preset("protonet-omniglot-1shot").override(
        [*TINY_RUN, "train.precision=bfloat16"]
    )
    result = train_run(config, out, progress=False)
    assert 0.0 <= result["metrics"]["accuracy"]["mean"] <= 1.0
    checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
    assert checkpoint.config["train"]["precision"] == "bfloat16"
    assert all(
        t.dtype == torch.float32 for t in checkpoint.learner.values() if t.is_floating_point()
    )


def test_precision_is_checked_in_the_configuration() -> None:
    with pytest.raises(ConfigError, match=r"train\.precision must be one of float32, bfloat16"):
        load_preset("protonet-omniglot-1shot").override(["train.precision=half"])
    with pytest.raises(ConfigError, match="not available for meta-RL"):
        load_preset("nav2d-maml-trpo").override(["train.precision=bfloat16"])


def test_bfloat16_without_native_support_warns(monkeypatch) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="no native support on this CPU"):
        warn_if_unsupported(torch.device("cpu"), "bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_unsupported(torch.device("cpu"), "float32")
