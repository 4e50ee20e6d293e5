"""Build a run's parts (task families, model, meta-learner, optimizer) from its configuration.

Adding a task family, a model or an algorithm is one builder function and one registry line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from torch import nn

from fastadapt.algorithms.base import MetaLearner
from fastadapt.algorithms.maml import MAML
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.pretrained import Pretrained
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.algorithms.reptile import Reptile
from fastadapt.algorithms.versa import Versa
from fastadapt.algorithms.versa_regression import VersaRegression
from fastadapt.config import RunConfig
from fastadapt.datasets.movielens import VARIANTS
from fastadapt.datasets.registry import DATASETS, RATINGS, dataset_root, split_loader
from fastadapt.errors import ConfigError
from fastadapt.nn.conv4 import Conv4
from fastadapt.nn.mlp import MLP
from fastadapt.nn.resnet12 import ResNet12
from fastadapt.recsys.cold_start import cold_start_split
from fastadapt.recsys.mean_rating import item_means
from fastadapt.recsys.melu import MeLU
from fastadapt.recsys.user_tasks import FEATURES, UserTasks
from fastadapt.tasks.augment import random_affine
from fastadapt.tasks.augmented_tasks import AugmentedTasks
from fastadapt.tasks.sampler import FewShotSampler
from fastadapt.tasks.sinusoid import SinusoidTasks
from fastadapt.tasks.task import TaskBatch


class TaskFamily(Protocol):
    """An indexable, seeded source of tasks: ``batch(indices)`` is a pure function of them.

    A family with a finite number of distinct tasks (the users of a partition) also has
    ``__len__``; see :func:`task_count`.
    """

    def batch(self, indices: list[int] | range) -> TaskBatch: ...


def task_count(family: TaskFamily, requested: int) -> int:
    """How many tasks to evaluate: ``requested``, or all of a finite family's if it has fewer
    (each user of a partition once)."""
    size = getattr(family, "__len__", None)
    return requested if size is None else min(requested, size())


@dataclass(frozen=True)
class FamilySpec:
    """How to build a task family, and the problem type of its tasks."""

    build: Callable[[RunConfig, str], TaskFamily]
    problem: str


_STREAMS = {"train": 0, "val": 1, "test": 2}


def _sinusoid(config: RunConfig, split: str) -> TaskFamily:
    if split == "train":
        return SinusoidTasks(config.task.shots, config.task.queries, config.train.seed, split)
    return SinusoidTasks(config.eval.shots, config.eval.queries, config.eval.seed, split)


def _image_episodes(config: RunConfig, split: str) -> TaskFamily:
    """Episodes of a named image dataset's class split (train, val or test classes)."""
    name = config.task.family
    root = Path(config.data.root).expanduser() if config.data.root else None
    load = split_loader(name, config.data.split)
    classes = load(dataset_root(name, root), split, False)
    if split == "train":
        task, seed = config.task, config.train.seed
    else:
        task, seed = config.eval, config.eval.seed
    sampler = FewShotSampler(classes, task.ways, task.shots, task.queries, seed, _STREAMS[split])
    if split == "train" and config.task.augment == "affine":
        return AugmentedTasks(sampler, random_affine)
    return sampler


def _users(config: RunConfig, split: str) -> TaskFamily:
    """Users of a ratings dataset as tasks: the training users, the validation users, or the
    test users of ``eval.partition`` (:mod:`fastadapt.recsys.cold_start`)."""
    name = config.task.family
    root = Path(config.data.root).expanduser() if config.data.root else None
    data = RATINGS[name].load(dataset_root(name, root), False)
    cold_start = cold_start_split(data, config.data.split_seed)
    if split == "train":
        task, seed, partition = config.task, config.train.seed, "train"
    else:
        task, seed = config.eval, config.eval.seed
        partition = "val" if split == "val" else config.eval.partition
    shuffle = split == "train"
    return UserTasks(data, cold_start, partition, task.shots, task.queries, seed, shuffle=shuffle)


TASK_FAMILIES: dict[str, FamilySpec] = {
    "sinusoid": FamilySpec(_sinusoid, "regression"),
    **{name: FamilySpec(_image_episodes, "classification") for name in DATASETS},
    **{name: FamilySpec(_users, "rating") for name in RATINGS},
}


def build_task_family(config: RunConfig, split: str) -> TaskFamily:
    """Tasks of ``split`` ("train", "val" or "test"); val and test use the eval protocol."""
    spec = _choose("task.family", config.task.family, TASK_FAMILIES)
    if config.task.augment != "none" and spec.problem != "classification":
        raise ConfigError(
            f"task.augment={config.task.augment!r} distorts images, but task.family="
            f"{config.task.family!r} has no images; set task.augment=none."
        )
    return spec.build(config, split)


def image_channels(family: str) -> int:
    """Channels of an image task family as its models see them: 1 (Omniglot), else 3 (RGB)."""
    return 1 if family == "omniglot" else 3


def _model_shape(config: RunConfig, head: bool) -> tuple[int, int | None]:
    """Input features (or channels) and outputs of the model; ``None``: an embedding."""
    if config.task.family == "sinusoid":
        return 1, 1 if head else None
    if config.task.family in RATINGS:
        return len(FEATURES), 1
    return image_channels(config.task.family), config.task.ways if head else None


def _mlp(config: RunConfig, in_features: int, out_features: int | None) -> nn.Module:
    if config.task.family != "sinusoid":
        raise ConfigError(
            "model.kind=mlp takes vectors, not images; use model.kind=conv4 or resnet12 for "
            f"task.family={config.task.family}."
        )
    return MLP(
        in_features, config.model.hidden, out_features, config.model.activation, config.model.init
    )


def _conv4(config: RunConfig, in_channels: int, ways: int | None) -> nn.Module:
    model = config.model
    return Conv4(
        in_channels,
        ways=ways,
        image_size=config.data.image_size,
        downsample=model.downsample,
        blocks=model.blocks,
        ceil_mode=model.ceil_mode,
        dropout=model.dropout,
    )


def _resnet12(config: RunConfig, in_channels: int, ways: int | None) -> nn.Module:
    return ResNet12(in_channels, image_size=config.data.image_size, ways=ways)


def _melu(config: RunConfig, in_features: int, out_features: int | None) -> nn.Module:
    if config.task.family not in RATINGS:
        raise ConfigError(
            f"model.kind=melu embeds MovieLens users and items; task.family must be one of "
            f"{sorted(RATINGS)}, got {config.task.family!r}."
        )
    num_items = VARIANTS[config.task.family].max_item_id
    # The prior's placeholder, the middle of the scale; training starts by setting it to the item
    # means (initialise_from_data) and a checkpoint restores it, so that building needs no data.
    prior = torch.full((num_items + 1,), 3.0) if config.model.item_prior else None
    return MeLU(num_items, config.model.embedding_dim, config.model.hidden, item_prior=prior)


MODELS: dict[str, Callable[[RunConfig, int, int | None], nn.Module]] = {
    "mlp": _mlp,
    "conv4": _conv4,
    "resnet12": _resnet12,
    "melu": _melu,
}


def _maml(config: RunConfig, model: nn.Module, problem: str) -> MetaLearner:
    algo, evaluation = config.algorithm, config.eval
    return MAML(
        model,
        problem=problem,
        inner_steps=algo.inner_steps,
        inner_lr=algo.inner_lr,
        eval_inner_steps=evaluation.inner_steps,
        eval_inner_lr=evaluation.inner_lr,
        report_steps=evaluation.report_steps,
        first_order=algo.first_order,
        anil=algo.anil,
        adapt=algo.adapt or None,
        meta_sgd=algo.meta_sgd,
        per_step_lr=algo.per_step_lr,
        batch_mode=algo.batch_mode,
    )


def _reptile(config: RunConfig, model: nn.Module, problem: str) -> MetaLearner:
    algo, evaluation = config.algorithm, config.eval
    return Reptile(
        model,
        problem=problem,
        inner_steps=algo.inner_steps,
        inner_lr=algo.inner_lr,
        inner_optimizer=algo.inner_optimizer,
        inner_batch=algo.inner_batch,
        inner_state=algo.inner_state,
        eval_inner_steps=evaluation.inner_steps,
        eval_inner_lr=evaluation.inner_lr,
        eval_inner_batch=evaluation.inner_batch,
    )


def _pretrained(config: RunConfig, model: nn.Module, problem: str) -> MetaLearner:
    algo, evaluation = config.algorithm, config.eval
    return Pretrained(
        model,
        problem=problem,
        inner_lr=algo.inner_lr,
        eval_inner_steps=evaluation.inner_steps,
        eval_inner_lr=evaluation.inner_lr,
        report_steps=evaluation.report_steps,
        anil=algo.anil,
        adapt=algo.adapt or None,
        batch_mode=algo.batch_mode,
    )


def _protonet(config: RunConfig, model: nn.Module, problem: str) -> MetaLearner:
    return ProtoNet(model, distance=config.algorithm.distance)


def _matching(config: RunConfig, model: nn.Module, problem: str) -> MetaLearner:
    embedding_dim = getattr(model, "embedding_size", None)
    if embedding_dim is None:
        raise ConfigError(
            "algorithm.name=matching needs an embedding model (model.kind=conv4 or resnet12)."
        )
    return MatchingNet(
        model,
        embedding_dim=embedding_dim,
        fce=config.algorithm.fce,
        read_steps=config.algorithm.read_steps,
        similarity=config.algorithm.similarity,
    )


def _versa(config: RunConfig, model: nn.Module, problem: str) -> MetaLearner:
    feature_dim = getattr(model, "embedding_size", None)
    if feature_dim is None:
        raise ConfigError(
            "algorithm.name=versa needs a feature extractor that states its embedding_size "
            "(model.kind=mlp, conv4 or resnet12)."
        )
    if problem == "regression":
        if config.algorithm.per_task_batch_norm:
            raise ConfigError(
                "algorithm.per_task_batch_norm is an option of VERSA's classifier, not of "
                "its regression variant; remove it."
            )
        return VersaRegression(model, feature_dim)
    return Versa(
        model,
        feature_dim,
        samples=config.algorithm.samples,
        per_task_batch_norm=config.algorithm.per_task_batch_norm,
    )


@dataclass(frozen=True)
class AlgorithmSpec:
    """How to build an algorithm, what it solves, and whether its model ends in a head."""

    build: Callable[[RunConfig, nn.Module, str], MetaLearner]
    problems: tuple[str, ...]
    head: bool


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "maml": AlgorithmSpec(_maml, ("regression", "classification", "rating"), head=True),
    "reptile": AlgorithmSpec(_reptile, ("regression", "classification"), head=True),
    "pretrained": AlgorithmSpec(_pretrained, ("regression", "classification", "rating"), head=True),
    "protonet": AlgorithmSpec(_protonet, ("classification",), head=False),
    "matching": AlgorithmSpec(_matching, ("classification",), head=False),
    "versa": AlgorithmSpec(_versa, ("regression", "classification"), head=False),
}


def build_learner(config: RunConfig) -> MetaLearner:
    """The meta-learner with a freshly initialised model (seeded by ``train.seed``)."""
    family = _choose("task.family", config.task.family, TASK_FAMILIES)
    algorithm = _choose("algorithm.name", config.algorithm.name, ALGORITHMS)
    if family.problem not in algorithm.problems:
        raise ConfigError(
            f"{config.algorithm.name} solves {' and '.join(algorithm.problems)} tasks, but "
            f"task.family={config.task.family} is {family.problem}; choose another family."
        )
    ways_differ = config.eval.ways != config.task.ways
    if algorithm.head and family.problem == "classification" and ways_differ:
        raise ConfigError(
            f"eval.ways ({config.eval.ways}) differs from task.ways ({config.task.ways}), but "
            f"{config.algorithm.name}'s classifier head has task.ways outputs; set them equal."
        )
    build_model = _choose("model.kind", config.model.kind, MODELS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        try:
            model = build_model(config, *_model_shape(config, algorithm.head))
            return algorithm.build(config, model, family.problem)
        except ValueError as error:
            raise ConfigError(f"invalid configuration: {error}") from error


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


def initialise_from_data(config: RunConfig, learner: MetaLearner, train: TaskFamily) -> None:
    """The data-dependent part of a fresh learner's initialisation, from the training tasks
    ``train``: MeLU's item prior (``model.item_prior``), each item's shrunk mean training
    rating (:func:`~fastadapt.recsys.mean_rating.item_means`). Nothing for other models."""
    model = getattr(learner, "model", None)
    if isinstance(model, MeLU) and model.item_prior is not None:
        if not isinstance(train, UserTasks):
            raise ConfigError("model.item_prior needs rating tasks (a MovieLens task.family).")
        prior = item_means(train, len(model.item_prior), config.model.item_prior_shrinkage)
        model.set_item_prior(prior)


def build_optimizer(config: RunConfig, learner: MetaLearner) -> torch.optim.Optimizer:
    """The outer-loop optimizer over every parameter of the meta-learner.

    ``train.weight_decay`` adds ``weight_decay · θ`` to every gradient (an L2 penalty of
    ``weight_decay / 2 · ‖θ‖²``: PyTorch's ``weight_decay`` of Adam and SGD). Adam uses
    PyTorch's fused kernel where it exists (CUDA, and CPU from torch 2.4): one kernel for all
    tensors instead of a few per tensor, 3x faster on small models.
    """
    optimizer = _choose("train.optimizer", config.train.optimizer, OPTIMIZERS)
    options: dict[str, object] = {"lr": config.train.lr}
    if config.train.weight_decay:
        options["weight_decay"] = config.train.weight_decay
    if optimizer is torch.optim.Adam and _fused_adam_supported(learner):
        options["fused"] = True
    return optimizer(learner.parameters(), **options)


def _fused_adam_supported(learner: MetaLearner) -> bool:
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    devices = {p.device.type for p in learner.parameters()}
    floating = all(p.is_floating_point() for p in learner.parameters())
    cpu_ok = (major, minor) >= (2, 4)
    return floating and devices <= ({"cuda", "cpu"} if cpu_ok else {"cuda"})


_T = TypeVar("_T")


def _choose(key: str, name: str, registry: dict[str, _T]) -> _T:
    if name not in registry:
        raise ConfigError(
            f"unknown {key} {name!r}; choose one of {sorted(registry)} "
            f"(e.g. --set {key}={sorted(registry)[0]})."
        )
    return registry[name]
