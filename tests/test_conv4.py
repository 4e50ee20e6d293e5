"""Conv-4 computes the plain ``conv → BatchNorm → ReLU → max-pool`` stack, gradients included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt import TaskBatch
from fastadapt.nn.conv4 import Conv4, ConvBlock
from fastadapt.nn.folded_conv_block import folded_conv_block


def _plain_block(block: ConvBlock) -> nn.Sequential:
    """The textbook block with ``block``'s parameters, in the textbook order."""
    conv = block[0]
    plain = nn.Sequential(
        nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=conv.stride, padding=1),
        nn.BatchNorm2d(conv.out_channels, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2) if isinstance(block[2], nn.MaxPool2d) else nn.Identity(),
    ).double()
    plain.load_state_dict(block.state_dict())
    return plain


def _randomise_affine(model: nn.Module) -> None:
    """BatchNorm's γ and β away from 1 and 0, negative γ included, so every term matters."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.normal_()
                module.bias.normal_()


@pytest.mark.parametrize("downsample", ["pool", "stride"])
@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_block_equals_textbook_block_with_second_order_gradients(
    in_channels: int, downsample: str
) -> None:
    torch.manual_seed(in_channels)
    block = ConvBlock(in_channels, 6, downsample).double()
    _randomise_affine(block)
    assert block.folds_batchnorm == (in_channels * 9 <= 27)
    plain = _plain_block(block)
    x = torch.rand(5, in_channels, 10, 10, dtype=torch.float64)
    target = torch.randn(5, 6, 5, 5, dtype=torch.float64)  # 10x10 → 5x5 either way

    def outputs_and_second_order(model: nn.Module) -> list[torch.Tensor]:
        out = model(x)
        loss = ((out - target) ** 2).sum()
        grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        # A MAML-style second-order quantity: the gradient of the squared gradient norm.
        penalty = sum((g**2).sum() for g in grads)
        second = torch.autograd.grad(penalty, list(model.parameters()))
        return [out, *grads, *second]

    # The convolution's bias cancels in BatchNorm: its gradients are rounding noise (~1e-8 of
    # a loss of this size) in both, hence the absolute tolerance.
    for ours, reference in zip(
        outputs_and_second_order(block), outputs_and_second_order(plain), strict=True
    ):
        torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-6)


@pytest.mark.parametrize("side", [9, 12])
def test_folded_block_matches_the_plain_composition(side: int) -> None:
    torch.manual_seed(side)
    x = torch.rand(4, 2, side, side, dtype=torch.float64)
    weight = torch.randn(7, 2, 3, 3, dtype=torch.float64)
    bias, gamma, beta = (torch.randn(7, dtype=torch.float64) for _ in range(3))
    folded = folded_conv_block(x, weight, bias, gamma, beta, eps=1e-5, padding=1)
    normalised = F.batch_norm(
        F.conv2d(x, weight, bias, padding=1), None, None, gamma, beta, training=True, eps=1e-5
    )
    torch.testing.assert_close(folded, F.max_pool2d(normalised, 2).relu(), rtol=1e-10, atol=1e-10)
    assert folded.is_contiguous(memory_format=torch.channels_last)
    plain = F.batch_norm(F.conv2d(x, weight, padding=1), None, None, training=True, eps=1e-5)
    no_affine = folded_conv_block(x, weight, None, None, None, eps=1e-5, padding=1)
    torch.testing.assert_close(no_affine, F.max_pool2d(plain, 2).relu(), rtol=1e-10, atol=1e-10)


def test_conv4_equals_textbook_stack_in_float32_and_float64() -> None:
    torch.manual_seed(1)
    model = Conv4(1, hidden=8, ways=5)
    _randomise_affine(model)
    plain = nn.Sequential(*[_plain_block(model[i]) for i in range(4)], nn.Flatten())
    plain.append(nn.Linear(8, 5).double())
    plain[-1].load_state_dict(model[-1].state_dict())
    x = torch.rand(10, 1, 28, 28)
    torch.testing.assert_close(model.double()(x.double()), plain(x.double()), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.float()(x), plain.float()(x), rtol=1e-4, atol=1e-4)


def test_strided_conv4_shapes_and_equality_with_the_textbook_stack() -> None:
    torch.manual_seed(2)
    model = Conv4(1, hidden=8, downsample="stride")
    assert model.embedding_size == 8 * 2 * 2
    _randomise_affine(model)
    plain = nn.Sequential(*[_plain_block(model[i]) for i in range(4)], nn.Flatten())
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(model.double()(x), plain(x), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="downsample must be one of"):
        Conv4(1, downsample="dilate")


def test_state_dict_names_are_those_of_the_textbook_stack() -> None:
    names = set(Conv4(1, hidden=4).state_dict())
    expected = {f"{b}.{m}.{p}" for b in range(4) for m in (0, 1) for p in ("weight", "bias")}
    assert names == expected


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 32, 32), (1, 28, 28)])
def test_wrong_input_shape_names_expected_and_given(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expects images \[n, 1, 28, 28\].*got a tensor of shape"):
        Conv4(1)(torch.zeros(shape))


def test_conv4_trains_in_protonet_and_loss_falls() -> None:
    """A few Adam steps of ProtoNet on one fixed generated episode lower its loss."""
    from fastadapt import ProtoNet, TaskBatch

    torch.manual_seed(0)
    images = torch.rand(1, 20, 1, 28, 28)
    labels = torch.arange(4).repeat_interleave(5).unsqueeze(0)
    support = images[:, ::5], labels[:, ::5]
    keep = torch.ones(20, dtype=torch.bool)
    keep[::5] = False
    batch = TaskBatch(*support, images[:, keep], labels[:, keep])
    learner = ProtoNet(Conv4(1, hidden=16))
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = learner.meta_loss(batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_through_conv4_equals_textbook_stack(first_order: bool) -> None:
    """MAML adapts the folded first block's BatchNorm and convolution like the plain ones."""
    from fastadapt import MAML

    torch.manual_seed(3)
    model = Conv4(1, hidden=4, ways=3, image_size=16)
    _randomise_affine(model)
    plain = nn.Sequential(*[_plain_block(model[i]) for i in range(4)], nn.Flatten())
    plain.append(nn.Linear(4, 3).double())
    plain[-1].load_state_dict(model[-1].state_dict())
    model = model.double()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 9, 1, 16, 16, generator=g, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 2] * 3] * 2)
    batch = TaskBatch(images[:, :3], labels[:, :3], images[:, 3:], labels[:, 3:])
    grads = []
    for net in (model, plain):
        learner = MAML(net, problem="classification", inner_steps=2, inner_lr=0.4,
                       first_order=first_order)  # fmt: skip
        grads.append(torch.autograd.grad(learner.meta_loss(batch).loss, list(net.parameters())))
    for ours, reference in zip(*grads, strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-7, atol=1e-8)


def test_maml_refuses_batchnorm_with_running_statistics() -> None:
    from fastadapt import MAML, ResNet12

    with pytest.raises(ValueError, match=r"track running statistics.*track_running_stats=False"):
        MAML(ResNet12(widths=(2, 2, 2, 2), image_size=16, ways=2), problem="classification")


@pytest.mark.parametrize("side", [7, 10])
def test_ceil_mode_block_equals_textbook_block_on_odd_and_even_inputs(side: int) -> None:
    # Odd inputs cannot use the folded form (it pools with floor): the block falls back.
    torch.manual_seed(side)
    block = ConvBlock(1, 6, ceil_mode=True).double()
    _randomise_affine(block)
    plain = _plain_block(block)
    plain[3] = nn.MaxPool2d(2, ceil_mode=True)
    x = torch.rand(5, 1, side, side, dtype=torch.float64)
    torch.testing.assert_close(block(x), plain(x), rtol=1e-10, atol=1e-10)
    assert block(x).shape[-1] == (side + 1) // 2


def test_variant_options_set_the_feature_size_and_dropout_acts_in_training_only() -> None:
    # VERSA's networks: ceil pooling on Omniglot (28→14→7→4→2), five blocks on mini-ImageNet
    # (84→42→21→10→5→2), both 2x2x64 = 256 features.
    versa_omniglot = Conv4(1, ceil_mode=True)
    assert versa_omniglot.embedding_size == 256
    assert versa_omniglot(torch.rand(2, 1, 28, 28)).shape == (2, 256)
    versa_mini = Conv4(3, image_size=84, blocks=5, dropout=0.5)
    assert versa_mini.embedding_size == 256
    x = torch.rand(3, 3, 84, 84)
    torch.manual_seed(0)
    assert not torch.equal(versa_mini(x), versa_mini(x))
    versa_mini.eval()
    torch.testing.assert_close(versa_mini(x), versa_mini(x))
    # Dropout has no parameters: parameter names are those of the plain network.
    assert set(versa_mini.state_dict()) == set(Conv4(3, image_size=84, blocks=5).state_dict())
    with pytest.raises(ValueError, match="blocks must be a positive integer"):
        Conv4(1, blocks=0)
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\)"):
        Conv4(1, dropout=1.0)
    with pytest.raises(ValueError, match="image_size must be at least 32 for 5"):
        Conv4(1, image_size=28, blocks=5)
