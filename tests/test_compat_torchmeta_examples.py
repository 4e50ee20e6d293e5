"""torchmeta's MAML and Prototypical Networks examples (``examples/maml`` and
``examples/protonet`` of tristandeleu/pytorch-meta) run on ``fastadapt.compat.torchmeta``.

The training steps below are written for this suite, not copied: they make the examples'
calls (the ``omniglot`` helper with the examples' arguments, ``BatchMetaDataLoader`` with a
worker, the examples' models layer for layer, ``gradient_update_parameters``,
``get_prototypes`` / ``prototypical_loss`` with ``dataset.num_classes_per_task``, a tqdm loop
left with ``break``, ``state_dict`` saving) on tiny Omniglot archives in the official layout,
read through the real Omniglot loader. Nothing is downloaded; ``download=True`` without
network must fail as the native dataset does.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from test_omniglot import CHARACTERS_PER_ALPHABET, TINY, write_tiny_archives
from torch import nn
from tqdm import tqdm

from fastadapt.compat.torchmeta.datasets.helpers import cifar_fs, omniglot
from fastadapt.compat.torchmeta.modules import (
    MetaBatchNorm2d,
    MetaConv2d,
    MetaLinear,
    MetaModule,
    MetaSequential,
)
from fastadapt.compat.torchmeta.modules.module import Params
from fastadapt.compat.torchmeta.utils.data import BatchMetaDataLoader, MetaBatch
from fastadapt.compat.torchmeta.utils.gradient_based import gradient_update_parameters
from fastadapt.compat.torchmeta.utils.prototype import get_prototypes, prototypical_loss
from fastadapt.datasets import cifar
from fastadapt.datasets import omniglot as omniglot_module
from fastadapt.io import download as download_module
from fastadapt.io.download import DownloadError, RemoteFile

# The examples' command-line defaults (5-way 5-shot, 15 test shots, one loader worker), with a
# smaller meta-batch and network so that two batches take a second.
WAYS, SHOTS, TEST_SHOTS, NUM_WORKERS = 5, 5, 15, 1
BATCH_SIZE, HIDDEN_SIZE, EMBEDDING_SIZE, NUM_BATCHES = 2, 8, 8, 2
STEP_SIZE = 0.4
DEVICE = torch.device("cpu")

pytestmark = pytest.mark.filterwarnings("ignore:.*not the official file:UserWarning")


# ------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchmeta's ``folder``: ``<folder>/omniglot`` holds the two official zips, tiny (10
    characters of 20 drawers, random 105x105 strokes)."""
    folder = tmp_path_factory.mktemp("torchmeta-examples")
    write_tiny_archives(folder / "omniglot")
    return folder


@pytest.fixture
def folder(archives: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``archives`` with the Omniglot checks sized to them: the archive counts, and Vinyals
    split files naming their characters (background alphabets train, one evaluation alphabet
    each for val and test), each character in its four rotations."""
    counts = {
        archive: (len(alphabets), len(alphabets) * CHARACTERS_PER_ALPHABET)
        for archive, alphabets in TINY.items()
    }
    monkeypatch.setattr(omniglot_module, "EXPECTED_COUNTS", counts)
    evaluation = TINY["images_evaluation"]
    splits = {"train": TINY["images_background"], "val": evaluation[:1], "test": evaluation[1:]}
    split_folder = tmp_path / "splits" / "omniglot" / "vinyals"
    split_folder.mkdir(parents=True)
    for split, alphabets in splits.items():
        names = [
            f"{alphabet}/character{character:02d}/rot{degrees:03d}"
            for alphabet in alphabets
            for character in range(1, CHARACTERS_PER_ALPHABET + 1)
            for degrees in omniglot_module.ROTATIONS
        ]
        (split_folder / f"{split}.txt").write_text("\n".join(names) + "\n", "utf-8")
    monkeypatch.setattr(omniglot_module, "resources", SimpleNamespace(files=lambda _: tmp_path))
    return archives


def check_torchmeta_shapes(batch: MetaBatch) -> None:
    """torchmeta's documented batch: inputs ``[batch_size, ways*shots, C, H, W]`` (``test``:
    ``ways*test_shots``), integer targets ``[batch_size, ways*shots]`` in ``0..ways-1``."""
    assert list(batch) == ["train", "test"]
    for split, shots in (("train", SHOTS), ("test", TEST_SHOTS)):
        inputs, targets = batch[split]
        assert inputs.shape == (BATCH_SIZE, WAYS * shots, 1, 28, 28)
        assert inputs.dtype == torch.float32 and targets.dtype == torch.int64
        assert targets.shape == (BATCH_SIZE, WAYS * shots)
        assert all(sorted(row.tolist()) == sorted(list(range(WAYS)) * shots) for row in targets)


# ------------------------------------------------------------------------------------ MAML
def conv3x3(in_channels: int, out_channels: int) -> MetaSequential:
    """The MAML example's block: 3x3 convolution, BatchNorm on batch statistics, ReLU, pool."""
    return MetaSequential(
        MetaConv2d(in_channels, out_channels, kernel_size=3, padding=1),
        MetaBatchNorm2d(out_channels, momentum=1.0, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class ConvolutionalNeuralNetwork(MetaModule):
    """The MAML example's model: four blocks of ``hidden_size`` channels, a linear head; its
    forward hands each part its entries of ``params`` with ``get_subdict``."""

    def __init__(self, in_channels: int, out_features: int, hidden_size: int = 64) -> None:
        super().__init__()
        self.features = MetaSequential(
            conv3x3(in_channels, hidden_size),
            conv3x3(hidden_size, hidden_size),
            conv3x3(hidden_size, hidden_size),
            conv3x3(hidden_size, hidden_size),
        )
        self.classifier = MetaLinear(hidden_size, out_features)

    def forward(self, inputs: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """Logits ``[n, out_features]`` of images ``[n, C, 28, 28]``."""
        features = self.features(inputs, params=self.get_subdict(params, "features"))
        features = features.view((features.size(0), -1))
        return self.classifier(features, params=self.get_subdict(params, "classifier"))


def classification_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The fraction of ``targets`` that are the argmax of ``logits``."""
    return (logits.argmax(dim=-1) == targets).float().mean()


def maml_outer_loss(
    model: ConvolutionalNeuralNetwork, batch: MetaBatch, first_order: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MAML example's step on one batch, task by task: one inner gradient step on the
    ``train`` examples, the loss and accuracy of the adapted model on the ``test`` ones,
    averaged over tasks."""
    train_inputs, train_targets = batch["train"]
    test_inputs, test_targets = batch["test"]
    train_inputs, train_targets = train_inputs.to(device=DEVICE), train_targets.to(device=DEVICE)
    test_inputs, test_targets = test_inputs.to(device=DEVICE), test_targets.to(device=DEVICE)
    outer_loss = torch.tensor(0.0, device=DEVICE)
    accuracy = torch.tensor(0.0, device=DEVICE)
    for train_input, train_target, test_input, test_target in zip(
        train_inputs, train_targets, test_inputs, test_targets
    ):
        inner_loss = F.cross_entropy(model(train_input), train_target)
        model.zero_grad()
        params = gradient_update_parameters(
            model, inner_loss, step_size=STEP_SIZE, first_order=first_order
        )
        test_logit = model(test_input, params=params)
        outer_loss += F.cross_entropy(test_logit, test_target)
        with torch.no_grad():
            accuracy += classification_accuracy(test_logit, test_target)
    outer_loss.div_(BATCH_SIZE)
    accuracy.div_(BATCH_SIZE)
    return outer_loss, accuracy


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_example_trains_with_only_its_imports_changed(folder, first_order):
    dataset = omniglot(
        folder,
        shots=SHOTS,
        ways=WAYS,
        shuffle=True,
        test_shots=TEST_SHOTS,
        meta_train=True,
        download=False,
    )
    dataloader = BatchMetaDataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=NUM_WORKERS
    )
    model = ConvolutionalNeuralNetwork(1, WAYS, hidden_size=HIDDEN_SIZE)
    model.to(device=DEVICE)
    model.train()
    meta_optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    initial = {name: p.detach().clone() for name, p in model.meta_named_parameters()}
    assert list(initial) == [name for name, _ in model.named_parameters()]

    losses, accuracies = [], []
    with tqdm(dataloader, total=NUM_BATCHES) as pbar:
        for batch_idx, batch in enumerate(pbar):
            model.zero_grad()
            check_torchmeta_shapes(batch)
            outer_loss, accuracy = maml_outer_loss(model, batch, first_order)
            outer_loss.backward()
            meta_optimizer.step()
            pbar.set_postfix(accuracy=f"{accuracy.item():.4f}")
            losses.append(outer_loss.item())
            accuracies.append(accuracy.item())
            if batch_idx == 0 and not first_order:
                # The first Adam step moves each weight against its gradient, here the exact
                # one (first-order MAML's is an approximation, with no such guarantee).
                after_step, _ = maml_outer_loss(model, batch, first_order)
                assert after_step.item() < losses[0]
            if batch_idx + 1 >= NUM_BATCHES:
                break

    assert len(losses) == NUM_BATCHES
    assert all(torch.isfinite(torch.tensor(losses))) and all(0 <= a <= 1 for a in accuracies)
    for name, parameter in model.meta_named_parameters():
        assert not torch.equal(parameter, initial[name]), f"{name} was not trained"
    # The example saves model.state_dict(); it loads back into a fresh model.
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    reloaded = ConvolutionalNeuralNetwork(1, WAYS, hidden_size=HIDDEN_SIZE)
    reloaded.load_state_dict(torch.load(buffer))
    images = batch["test"][0][0]
    assert torch.equal(reloaded(images), model(images))


# -------------------------------------------------------------------- Prototypical Networks
def plain_conv3x3(in_channels: int, out_channels: int) -> nn.Sequential:
    """The ProtoNet example's block, in stock layers: convolution, BatchNorm, ReLU, pool."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class PrototypicalNetwork(nn.Module):
    """The ProtoNet example's encoder: four blocks, the last with ``out_channels``; it embeds
    a whole batch of tasks ``[batch, n, C, H, W]`` as ``[batch, n, out_channels]``."""

    def __init__(self, in_channels: int, out_channels: int, hidden_size: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            plain_conv3x3(in_channels, hidden_size),
            plain_conv3x3(hidden_size, hidden_size),
            plain_conv3x3(hidden_size, hidden_size),
            plain_conv3x3(hidden_size, out_channels),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Embeddings of every image of every task, the tasks kept apart."""
        embeddings = self.encoder(inputs.view(-1, *inputs.shape[2:]))
        return embeddings.view(*inputs.shape[:2], -1)


def prototype_accuracy(
    prototypes: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """The fraction of queries whose nearest prototype (squared Euclidean) is their class."""
    distances = ((embeddings.unsqueeze(2) - prototypes.unsqueeze(1)) ** 2).sum(dim=-1)
    return (distances.argmin(dim=-1) == targets).float().mean()


def protonet_loss(
    model: PrototypicalNetwork, batch: MetaBatch, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ProtoNet example's step on one batch: the loss, the prototypes
    ``[batch, ways, D]`` and the query embeddings ``[batch, ways*test_shots, D]``."""
    train_inputs, train_targets = batch["train"]
    train_embeddings = model(train_inputs.to(device=DEVICE))
    test_inputs, test_targets = batch["test"]
    test_embeddings = model(test_inputs.to(device=DEVICE))
    prototypes = get_prototypes(train_embeddings, train_targets.to(device=DEVICE), num_classes)
    loss = prototypical_loss(prototypes, test_embeddings, test_targets.to(device=DEVICE))
    return loss, prototypes, test_embeddings


def test_protonet_example_trains_with_only_its_imports_changed(folder):
    dataset = omniglot(
        folder,
        shots=SHOTS,
        ways=WAYS,
        shuffle=True,
        test_shots=TEST_SHOTS,
        meta_train=True,
        download=False,
    )
    dataloader = BatchMetaDataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=NUM_WORKERS
    )
    assert dataset.num_classes_per_task == WAYS
    model = PrototypicalNetwork(1, EMBEDDING_SIZE, hidden_size=HIDDEN_SIZE)
    model.to(device=DEVICE)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    initial = [p.detach().clone() for p in model.parameters()]

    losses, accuracies = [], []
    with tqdm(dataloader, total=NUM_BATCHES) as pbar:
        for batch_idx, batch in enumerate(pbar):
            model.zero_grad()
            check_torchmeta_shapes(batch)
            loss, prototypes, test_embeddings = protonet_loss(
                model, batch, dataset.num_classes_per_task
            )
            assert prototypes.shape == (BATCH_SIZE, WAYS, EMBEDDING_SIZE)
            assert test_embeddings.shape == (BATCH_SIZE, WAYS * TEST_SHOTS, EMBEDDING_SIZE)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                accuracy = prototype_accuracy(prototypes, test_embeddings, batch["test"][1])
                pbar.set_postfix(accuracy=f"{accuracy.item():.4f}")
            losses.append(loss.item())
            accuracies.append(accuracy.item())
            if batch_idx == 0:  # the first Adam step moves each weight against its gradient
                with torch.no_grad():
                    after_step, _, _ = protonet_loss(model, batch, WAYS)
                assert after_step.item() < losses[0]
            if batch_idx + 1 >= NUM_BATCHES:
                break

    assert len(losses) == NUM_BATCHES
    assert all(torch.isfinite(torch.tensor(losses))) and all(0 <= a <= 1 for a in accuracies)
    assert all(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), initial))


# ------------------------------------------------------------------------------ bad input
@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> str:
    """An address on a local port nothing listens on (connection refused), retried at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(download_module, "BACKOFF_SECONDS", 0.0)
    monkeypatch.setenv("no_proxy", "*")  # never route 127.0.0.1 through a configured proxy
    return f"http://127.0.0.1:{port}/"


def test_omniglot_download_without_network_fails_as_the_native_dataset(
    unreachable, tmp_path, monkeypatch
):
    remotes = {
        name: RemoteFile(unreachable + remote.filename, remote.filename, remote.md5)
        for name, remote in omniglot_module.ARCHIVES.items()
    }
    monkeypatch.setattr(omniglot_module, "ARCHIVES", remotes)
    with pytest.raises(DownloadError) as native:
        omniglot_module.Omniglot(tmp_path / "omniglot", download=True, progress=False)
    with pytest.raises(DownloadError) as compat:
        omniglot(tmp_path, shots=SHOTS, ways=WAYS, meta_train=True, download=True)
    assert str(compat.value) == str(native.value)
    assert unreachable in str(compat.value) and str(tmp_path / "omniglot") in str(compat.value)


def test_cifar_download_without_network_fails_as_the_native_dataset(
    unreachable, tmp_path, monkeypatch
):
    remote = cifar.CIFAR100
    monkeypatch.setattr(
        cifar, "CIFAR100", RemoteFile(unreachable + remote.filename, remote.filename, remote.md5)
    )
    with pytest.raises(DownloadError) as native:
        cifar.cifar_fs(tmp_path / "cifar100", "train", download=True)
    with pytest.raises(DownloadError) as compat:
        cifar_fs(tmp_path, shots=SHOTS, ways=WAYS, meta_train=True, download=True)
    assert str(compat.value) == str(native.value)
