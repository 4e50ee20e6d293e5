"""fastadapt.compat.torchmeta: torchmeta's documented usage patterns, on tiny generated data,
give the numbers of the native API on the same episodes; bad input gets a clear error."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_cifar import _build as write_tiny_cifar100
from test_mini_imagenet import _write_cache_pickle
from test_tiered_imagenet import _write as write_tiny_tiered
from torch import nn

from fastadapt import MAML, ConfigError
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.compat.torchmeta.datasets.helpers import (
    cifar_fs,
    fc100,
    miniimagenet,
    omniglot,
    tieredimagenet,
)
from fastadapt.compat.torchmeta.modules import (
    MetaBatchNorm2d,
    MetaConv2d,
    MetaLinear,
    MetaModule,
    MetaSequential,
)
from fastadapt.compat.torchmeta.utils.data import BatchMetaDataLoader
from fastadapt.compat.torchmeta.utils.gradient_based import gradient_update_parameters
from fastadapt.compat.torchmeta.utils.matching import (
    matching_log_probas,
    matching_loss,
    matching_probas,
)
from fastadapt.compat.torchmeta.utils.prototype import get_prototypes, prototypical_loss
from fastadapt.datasets import registry
from fastadapt.datasets._common import DatasetError
from fastadapt.datasets.class_set import ClassSet
from fastadapt.tasks.loader import TaskLoader
from fastadapt.tasks.sampler import FewShotSampler
from fastadapt.tasks.task import TaskBatch

WAYS, SHOTS, TEST_SHOTS = 5, 1, 2


# ------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchmeta's layout: ``<folder>/cifar100`` holds a tiny CIFAR-100 archive (6 images of
    each of the 100 classes, random pixels)."""
    root = tmp_path_factory.mktemp("torchmeta-data")
    write_tiny_cifar100(root / "cifar100")
    return root


def native_cifar_fs(folder: Path, split: str = "train") -> ClassSet:
    return registry.dataset("cifar-fs").load(folder / "cifar100", split, False)


def cifar_episodes(folder: Path, tasks: int = 2, seed: int = 3) -> TaskBatch:
    """Native episodes of CIFAR-FS train, the images in float64."""
    sampler = FewShotSampler(native_cifar_fs(folder), WAYS, SHOTS, TEST_SHOTS, seed=seed)
    batch = sampler.batch(range(tasks))
    return TaskBatch(
        batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y
    )


def meta_conv_net() -> MetaSequential:
    """torchmeta's MAML model shape, small: conv, BatchNorm with batch statistics, head."""
    return MetaSequential(
        MetaConv2d(3, 4, 3, padding=1),
        MetaBatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(4),
        nn.Flatten(),
        MetaLinear(4 * 8 * 8, WAYS),
    ).double()


def stock_conv_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, WAYS),
    ).double()


def embedding_net(batch_norm: bool) -> nn.Sequential:
    norm = nn.BatchNorm2d(4, track_running_stats=False) if batch_norm else nn.Identity()
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), norm, nn.ReLU(), nn.MaxPool2d(4), nn.Flatten()
    ).double()


# --------------------------------------------------------------------------- import paths
def test_import_paths_mirror_torchmeta():
    import fastadapt.compat.torchmeta as torchmeta

    assert torchmeta.modules.MetaModule is MetaModule
    assert torchmeta.utils.data.BatchMetaDataLoader is BatchMetaDataLoader
    assert torchmeta.datasets.helpers.omniglot is omniglot
    assert torchmeta.utils.gradient_update_parameters is gradient_update_parameters
    assert torchmeta.utils.get_prototypes is get_prototypes
    assert torchmeta.utils.matching_loss is matching_loss


# ------------------------------------------------------------------ datasets and the loader
def test_batch_dicts_have_torchmeta_shapes_and_the_native_episodes(folder):
    dataset = cifar_fs(folder, shots=2, ways=WAYS, test_shots=3, seed=7, meta_train=True)
    loader = BatchMetaDataLoader(dataset, batch_size=4, shuffle=False)
    native = TaskLoader(FewShotSampler(native_cifar_fs(folder), WAYS, 2, 3, seed=7), 4)
    for batch, expected in itertools.islice(zip(loader, native), 2):
        assert list(batch) == ["train", "test"]
        (train_x, train_y), (test_x, test_y) = batch["train"], batch["test"]
        assert train_x.shape == (4, WAYS * 2, 3, 32, 32) and train_y.shape == (4, WAYS * 2)
        assert test_x.shape == (4, WAYS * 3, 3, 32, 32) and test_y.shape == (4, WAYS * 3)
        assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
        for got, want in zip(
            (train_x, train_y, test_x, test_y),
            (expected.support_x, expected.support_y, expected.query_x, expected.query_y),
        ):
            assert torch.equal(got, want)


def test_shuffle_continues_the_stream_and_no_shuffle_repeats_it(folder):
    dataset = cifar_fs(folder, shots=1, ways=WAYS, seed=1, meta_split="train")
    episodes = dataset.sampler
    shuffled = BatchMetaDataLoader(dataset, batch_size=2)
    first, second = next(iter(shuffled)), next(iter(shuffled))
    assert torch.equal(first["train"][0], episodes.batch(range(0, 2)).support_x)
    assert torch.equal(second["train"][0], episodes.batch(range(2, 4)).support_x)
    fixed = BatchMetaDataLoader(dataset, batch_size=2, shuffle=False)
    assert torch.equal(next(iter(fixed))["test"][0], next(iter(fixed))["test"][0])


def test_worker_processes_give_the_same_batches(folder):
    dataset = cifar_fs(folder, shots=1, ways=WAYS, seed=4, shuffle=False, meta_train=True)
    in_process = BatchMetaDataLoader(dataset, batch_size=2, shuffle=False)
    in_worker = BatchMetaDataLoader(dataset, batch_size=2, shuffle=False, num_workers=1)
    for want, got in itertools.islice(zip(in_process, in_worker), 2):
        assert torch.equal(got["train"][0], want["train"][0])
        assert torch.equal(got["test"][1], want["test"][1])


def test_shuffle_false_takes_the_first_examples_of_each_class(folder):
    dataset = cifar_fs(
        folder, shots=2, ways=WAYS, test_shots=3, seed=5, shuffle=False, meta_val=True
    )
    classes = native_cifar_fs(folder, "val")
    batch = dataset.batch([4])
    drawn, _ = dataset.sampler.episode(4)
    per_class = classes.gather(drawn, np.broadcast_to(np.arange(5), (WAYS, 5)))
    assert torch.equal(batch.support_x[0], per_class[:, :2].flatten(0, 1))
    assert torch.equal(batch.query_x[0], per_class[:, 2:].flatten(0, 1))
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_transform_applies_to_each_image_tensor(folder):
    plain = cifar_fs(folder, shots=1, ways=WAYS, seed=2, meta_train=True)
    cropped = cifar_fs(
        folder,
        shots=1,
        ways=WAYS,
        seed=2,
        meta_train=True,
        transform=lambda image: image[:, 4:-4, 4:-4] * 2,
    )
    want, got = plain.batch(range(3)), cropped.batch(range(3))
    assert got.support_x.shape == (3, WAYS, 3, 24, 24)
    assert torch.equal(got.query_x, want.query_x[..., 4:-4, 4:-4] * 2)
    assert torch.equal(got.query_y, want.query_y)


def test_each_helper_reads_its_folder_under_torchmeta_names(folder, tmp_path):
    assert fc100(folder, 1, WAYS, meta_test=True).sampler.classes.num_classes == 20
    assert cifar_fs(folder, 1, WAYS, meta_test=True).sampler.classes.num_classes == 20
    _write_cache_pickle(_mkdir(tmp_path / "miniimagenet"), "val", per_class=2)
    mini = miniimagenet(tmp_path, shots=1, ways=WAYS, meta_split="val", seed=0)
    assert mini.sampler.classes.num_classes == 16
    assert mini.batch([0]).support_x.shape == (1, WAYS, 3, 84, 84)
    write_tiny_tiered(_mkdir(tmp_path / "tieredimagenet"), "test", images="npz")
    tiered = tieredimagenet(tmp_path, shots=2, ways=3, test_shots=2, meta_test=True)
    assert tiered.batch([0, 1]).query_x.shape == (2, 6, 3, 84, 84)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


@pytest.fixture
def fake_omniglot(monkeypatch):
    """The registry's Omniglot loader replaced by 6 random characters with rotation classes,
    recording what it was asked; the real loader is tested in test_omniglot.py."""
    calls = []
    rng = np.random.default_rng(0)
    names = [f"Alphabet/character{c:02d}" for c in range(1, 7)]
    characters = ClassSet(
        rng.integers(0, 256, (6 * 20, 28, 28), dtype=np.uint8), np.repeat(np.arange(6), 20), names
    )

    def load(root: Path, split: str, download: bool) -> ClassSet:
        calls.append((root, split, download))
        return characters.with_rotations((0, 90, 180, 270))

    entry = dataclasses.replace(registry.DATASETS["omniglot"], load=load)
    monkeypatch.setitem(registry.DATASETS, "omniglot", entry)
    return calls


def test_omniglot_is_the_registry_split_with_rotation_classes(fake_omniglot, tmp_path):
    dataset = omniglot(tmp_path, shots=1, ways=WAYS, test_shots=15, meta_val=True, download=True)
    assert fake_omniglot == [(tmp_path / "omniglot", "val", True)]
    assert dataset.sampler.classes.num_classes == 24
    assert (dataset.shots, dataset.test_shots) == (1, 15)
    assert dataset.batch([0]).query_x.shape == (1, WAYS * 15, 1, 28, 28)
    unrotated = omniglot(tmp_path, 1, WAYS, meta_train=True, class_augmentations=None)
    assert unrotated.sampler.classes.num_classes == 6
    assert omniglot(tmp_path, 1, WAYS, meta_train=True).test_shots == 1  # test_shots = shots


def test_seed_none_draws_from_torch_and_seeds_reproduce(fake_omniglot, tmp_path):
    torch.manual_seed(11)
    first = omniglot(tmp_path, 1, WAYS, meta_train=True)
    torch.manual_seed(11)
    assert omniglot(tmp_path, 1, WAYS, meta_train=True).seed == first.seed
    again = omniglot(tmp_path, 1, WAYS, seed=first.seed, meta_train=True)
    assert torch.equal(again.batch(range(3)).support_x, first.batch(range(3)).support_x)


# ------------------------------------------------------------------- the modules, params=
def test_meta_layers_with_params_equal_stock_layers_under_functional_call():
    model = meta_conv_net()
    stock = stock_conv_net()
    stock.load_state_dict(model.state_dict())
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    params = {name: p * 1.5 for name, p in model.meta_named_parameters()}
    assert torch.equal(model(x), stock(x))
    want = torch.func.functional_call(stock, params, (x,))
    assert torch.equal(model(x, params=params), want)


def test_meta_named_parameters_and_get_subdict():
    model = MetaSequential(MetaLinear(2, 3), nn.Linear(3, 3), MetaSequential(MetaLinear(3, 1)))
    names = [name for name, _ in model.meta_named_parameters()]
    assert names == ["0.weight", "0.bias", "2.0.weight", "2.0.bias"]
    assert len(list(model.meta_parameters())) == 4
    params = dict(model.meta_named_parameters())
    assert list(model.get_subdict(params, "2")) == ["0.weight", "0.bias"]
    assert model.get_subdict(None, "2") is None


def test_meta_batchnorm_follows_batchnorm_running_statistics():
    meta, stock = MetaBatchNorm2d(3).double(), nn.BatchNorm2d(3).double()
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    params = {"weight": torch.full((3,), 2.0, dtype=torch.float64), "bias": torch.ones(3).double()}
    assert torch.equal(meta(x, params=params), torch.func.functional_call(stock, params, (x,)))
    assert torch.equal(meta.running_mean, stock.running_mean)
    assert meta.num_batches_tracked == stock.num_batches_tracked == 1
    meta.eval()
    stock.eval()
    assert torch.equal(meta(x, params=params), torch.func.functional_call(stock, params, (x,)))


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_step_through_meta_module_equals_native_maml(folder, first_order):
    batch = cifar_episodes(folder)
    model = meta_conv_net()
    native_model = stock_conv_net()
    native_model.load_state_dict(model.state_dict())
    step_size, inner_steps = 0.4, 2
    # torchmeta's MAML example, task by task.
    outer_loss = torch.tensor(0.0, dtype=torch.float64)
    for task in range(batch.num_tasks):
        params = None
        for _ in range(inner_steps):
            logits = model(batch.support_x[task], params=params)
            inner_loss = F.cross_entropy(logits, batch.support_y[task])
            params = gradient_update_parameters(
                model, inner_loss, params=params, step_size=step_size, first_order=first_order
            )
        test_logits = model(batch.query_x[task], params=params)
        outer_loss += F.cross_entropy(test_logits, batch.query_y[task])
    outer_loss = outer_loss / batch.num_tasks
    outer_loss.backward()
    maml = MAML(
        native_model,
        problem="classification",
        inner_steps=inner_steps,
        inner_lr=step_size,
        first_order=first_order,
    )
    native_loss = maml.meta_loss(batch).loss
    native_loss.backward()
    torch.testing.assert_close(outer_loss, native_loss, rtol=1e-12, atol=1e-12)
    native_grads = {name: p.grad for name, p in native_model.named_parameters()}
    for name, parameter in model.meta_named_parameters():
        torch.testing.assert_close(parameter.grad, native_grads[name], rtol=1e-9, atol=1e-12)


def test_step_size_dict_and_tensor():
    model = MetaLinear(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    loss = model(x).pow(2).sum()
    rates = {"weight": torch.full((2, 3), 0.1).double(), "bias": 0.3}
    updated = gradient_update_parameters(model, loss, step_size=rates, first_order=True)
    grad_w, grad_b = torch.autograd.grad(model(x).pow(2).sum(), [model.weight, model.bias])
    torch.testing.assert_close(updated["weight"], model.weight - 0.1 * grad_w)
    torch.testing.assert_close(updated["bias"], model.bias - 0.3 * grad_b)
    alpha = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    updated = gradient_update_parameters(model, model(x).pow(2).sum(), step_size=alpha)
    torch.testing.assert_close(updated["bias"], model.bias - 0.2 * grad_b)
    # A learned step size (Meta-SGD style) gets a gradient through the update.
    (d_alpha,) = torch.autograd.grad(updated["bias"].sum(), alpha)
    torch.testing.assert_close(d_alpha, -grad_b.sum())


# ------------------------------------------------------------------- metric-learning heads
def test_prototypical_step_equals_native_protonet(folder):
    batch = cifar_episodes(folder, tasks=3)
    model = embedding_net(batch_norm=True)
    tasks = batch.num_tasks
    train_embeddings = model(batch.support_x.flatten(0, 1)).view(tasks, WAYS * SHOTS, -1)
    test_embeddings = model(batch.query_x.flatten(0, 1)).view(tasks, WAYS * TEST_SHOTS, -1)
    prototypes = get_prototypes(train_embeddings, batch.support_y, WAYS)
    loss = prototypical_loss(prototypes, test_embeddings, batch.query_y)
    native = ProtoNet(model).meta_loss(batch).loss
    torch.testing.assert_close(loss, native, rtol=1e-12, atol=1e-12)
    parameters = list(model.parameters())
    for got, want in zip(
        torch.autograd.grad(loss, parameters), torch.autograd.grad(native, parameters)
    ):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    per_query = prototypical_loss(prototypes, test_embeddings, batch.query_y, reduction="none")
    assert per_query.shape == (tasks, WAYS * TEST_SHOTS)


def test_matching_loss_equals_native_matching_net(folder):
    batch = cifar_episodes(folder, tasks=3)
    model = embedding_net(batch_norm=False)
    tasks = batch.num_tasks
    train_embeddings = model(batch.support_x.flatten(0, 1)).view(tasks, WAYS * SHOTS, -1)
    test_embeddings = model(batch.query_x.flatten(0, 1)).view(tasks, WAYS * TEST_SHOTS, -1)
    loss = matching_loss(train_embeddings, batch.support_y, test_embeddings, batch.query_y, WAYS)
    native = MatchingNet(model).meta_loss(batch).loss
    torch.testing.assert_close(loss, native, rtol=1e-12, atol=1e-12)
    parameters = list(model.parameters())
    for got, want in zip(
        torch.autograd.grad(loss, parameters), torch.autograd.grad(native, parameters)
    ):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    probas = matching_probas(train_embeddings, batch.support_y, test_embeddings, WAYS)
    assert probas.shape == (tasks, WAYS, WAYS * TEST_SHOTS)
    torch.testing.assert_close(probas.sum(dim=1), torch.ones(tasks, WAYS * TEST_SHOTS).double())
    log_probas = matching_log_probas(train_embeddings, batch.support_y, test_embeddings, WAYS)
    torch.testing.assert_close(log_probas.exp(), probas)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"meta_split": "train", "meta_train": True}, ConfigError, "both meta_split"),
        ({"meta_train": True, "meta_test": True}, ConfigError, "exactly one"),
        ({}, ConfigError, "no split chosen"),
        ({"meta_split": "validation"}, ConfigError, "unknown meta_split 'validation'"),
        ({"meta_train": True, "target_transform": len}, ConfigError, "Categorical"),
        ({"meta_train": True, "dataset_transform": len}, ConfigError, "ClassSplitter"),
        ({"meta_train": True, "class_augmentations": [len]}, ConfigError, "class_augment"),
        ({"meta_train": True, "use_vinyals_split": False}, ConfigError, r"lake\(split\)"),
        ({"meta_train": True, "num_classes_per_task": 5}, ConfigError, "pass ways"),
        ({"meta_train": True, "num_ways": 5}, TypeError, "num_ways"),
        ({"meta_train": True, "seed": 1.5}, TypeError, "seed must be an integer"),
    ],
)
def test_helper_arguments_are_checked(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        omniglot(tmp_path, 1, WAYS, **kwargs)


def test_a_folder_without_data_says_what_to_put_where(tmp_path):
    with pytest.raises(DatasetError, match=f"not in {tmp_path / 'cifar100'}"):
        cifar_fs(tmp_path, 1, WAYS, meta_train=True)
    (tmp_path / "miniimagenet").mkdir()
    (tmp_path / "miniimagenet" / "train_data.hdf5").write_bytes(b"")
    with pytest.raises(DatasetError, match="torchmeta's HDF5 conversion"):
        miniimagenet(tmp_path, 1, WAYS, meta_train=True)
    with pytest.raises(ConfigError, match="cannot be downloaded"):
        tieredimagenet(tmp_path, 1, WAYS, meta_train=True, download=True)


def test_shots_and_ways_the_split_cannot_serve(folder):
    with pytest.raises(ConfigError, match=r"ways=65 is more than the 64 classes"):
        cifar_fs(folder, 1, 65, meta_train=True)
    with pytest.raises(ConfigError, match=r"fewer than shots \+ queries = 4 \+ 3"):
        cifar_fs(folder, 4, WAYS, test_shots=3, meta_train=True)


def test_a_transform_that_needs_pil_images_is_explained(folder):
    def to_tensor(picture):
        raise TypeError(f"pic should be PIL Image or ndarray. Got {type(picture)}")

    dataset = cifar_fs(folder, 1, WAYS, meta_train=True, transform=to_tensor)
    with pytest.raises(ConfigError, match=r"drop ToTensor\(\)"):
        next(iter(BatchMetaDataLoader(dataset)))


def test_loader_arguments_are_checked(folder):
    dataset = cifar_fs(folder, 1, WAYS, meta_train=True)
    with pytest.raises(TypeError, match="must come from a helper"):
        BatchMetaDataLoader([dataset.batch([0])])
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
        BatchMetaDataLoader(dataset, batch_size=0)
    with pytest.raises(ConfigError, match="sampler is not supported"):
        BatchMetaDataLoader(dataset, sampler=range(3))
    with pytest.raises(ConfigError, match="worker_init_fn is not supported"):
        BatchMetaDataLoader(dataset, worker_init_fn=print)


def test_params_with_missing_or_extra_names_are_refused():
    model = meta_conv_net()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    params = dict(model.meta_named_parameters())
    without_bias = {k: v for k, v in params.items() if k != "5.bias"}
    with pytest.raises(ConfigError, match=r"missing: 5\.bias; unexpected: none"):
        model(x, params=without_bias)
    with pytest.raises(ConfigError, match=r"missing: none; unexpected: 6\.weight"):
        model(x, params={**params, "6.weight": params["5.weight"]})
    with pytest.raises(ConfigError, match="unexpected: scale"):
        MetaLinear(2, 2)(
            torch.ones(1, 2),
            params={"weight": torch.ones(2, 2), "bias": None, "scale": torch.ones(1)},
        )
    with pytest.raises(TypeError, match="params must be a dict"):
        model(x, params=list(params.values()))


def test_gradient_update_arguments_are_checked():
    model = MetaLinear(2, 1)
    loss = model(torch.ones(3, 2)).sum()
    with pytest.raises(TypeError, match="model must be a MetaModule"):
        gradient_update_parameters(nn.Linear(2, 1), loss)
    with pytest.raises(ConfigError, match="step_size has no entry for bias"):
        gradient_update_parameters(model, loss, step_size={"weight": 0.1})
    with pytest.raises(ConfigError, match=r"entries head\.weight that are not meta-parameters"):
        gradient_update_parameters(model, loss, params={"head.weight": model.weight})
    with pytest.raises(TypeError, match="step_size must be a number"):
        gradient_update_parameters(model, loss, step_size="0.1")


def test_metric_heads_refuse_bad_labels():
    embeddings = torch.randn(2, 4, 3)
    labels = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 2]])
    with pytest.raises(ConfigError, match="class 3 has no example in targets of task 1"):
        get_prototypes(embeddings, labels, 4)
    with pytest.raises(ConfigError, match=r"must lie in 0\.\.2"):
        get_prototypes(embeddings, labels, 3)
    with pytest.raises(ConfigError, match=r"targets must be \[batch, examples\]"):
        get_prototypes(embeddings, labels[:, :3], 4)
    with pytest.raises(ConfigError, match=r"must be a tensor \[batch, examples, features\]"):
        prototypical_loss(torch.randn(4, 3), embeddings, labels)
    with pytest.raises(ConfigError, match="integer class labels"):
        matching_loss(embeddings, labels.float(), embeddings, labels, 4)
