"""random_affine (Koch et al. 2015's distortions), AugmentedTasks and ``task.augment``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastadapt.config import RunConfig
from fastadapt.datasets.class_set import ClassSet
from fastadapt.engine.build import build_task_family
from fastadapt.errors import ConfigError
from fastadapt.tasks.augment import random_affine
from fastadapt.tasks.augmented_tasks import AugmentedTasks
from fastadapt.tasks.sampler import FewShotSampler

SIDE = 41


def blob(row: int, column: int) -> torch.Tensor:
    """A ``[1, 1, SIDE, SIDE]`` image, zero but for a 3x3 square centred at (row, column)."""
    image = torch.zeros(1, 1, SIDE, SIDE)
    image[..., row - 1 : row + 2, column - 1 : column + 2] = 1.0
    return image


def centroid(image: torch.Tensor) -> np.ndarray:
    """(x, y) of the image's mass, relative to the image centre, in pixels."""
    weights = image.reshape(SIDE, SIDE).double()
    grid = torch.arange(SIDE, dtype=torch.float64) - (SIDE - 1) / 2
    y = (weights.sum(1) * grid).sum() / weights.sum()
    x = (weights.sum(0) * grid).sum() / weights.sum()
    return np.array([x.item(), y.item()])


def test_probability_zero_is_the_identity_and_shapes_are_kept():
    images = torch.rand(2, 3, 1, 12, 12)
    assert torch.allclose(random_affine(images, 5, probability=0.0), images, atol=1e-6)
    out = random_affine(images, 5)
    assert out.shape == images.shape and out.dtype == images.dtype


def test_a_pure_function_of_the_seed_with_one_map_per_image():
    images = blob(20, 30).repeat(16, 1, 1, 1)
    first, again, other = (random_affine(images, seed) for seed in (3, 3, 4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    distinct = {tuple(centroid(image).round(3)) for image in first}
    assert len(distinct) > 8  # the same image, distorted differently at each position


def test_scaling_moves_points_away_from_the_centre_by_the_factor():
    # A forward map x -> 1.2 x: a point 10 px right of the centre lands 12 px right.
    images = blob(20, 30).repeat(4, 1, 1, 1)
    scaled = random_affine(
        images, 0, rotation=0, shear=0, scale=(1.2, 1.2), shift=0, probability=1.0
    )
    for image in scaled:
        assert np.allclose(centroid(image), [12.0, 0.0], atol=0.05)


def test_rotation_keeps_the_distance_to_the_centre_and_turns_at_most_the_range():
    images = blob(20, 30).repeat(32, 1, 1, 1)
    rotated = random_affine(images, 1, rotation=10.0, shear=0, shift=0, scale=(1, 1))
    angles = []
    for image in rotated:
        x, y = centroid(image)
        assert math.hypot(x, y) == pytest.approx(10.0, abs=0.05)
        angles.append(math.degrees(math.atan2(y, x)))
    assert max(abs(a) for a in angles) <= 10.0 + 0.1
    assert sum(a == pytest.approx(0.0, abs=1e-3) for a in angles) > 4  # rotation left out
    assert max(abs(a) for a in angles) > 5.0


def test_shifts_stay_within_the_fraction_of_the_side():
    images = blob(20, 20).repeat(32, 1, 1, 1)
    moved = random_affine(images, 2, rotation=0, shear=0, scale=(1, 1), shift=0.1)
    offsets = np.array([centroid(image) for image in moved])
    assert np.abs(offsets).max() <= 0.1 * SIDE + 0.05
    assert np.abs(offsets).max() > 0.05 * SIDE


def test_pixels_from_outside_repeat_the_border():
    white = torch.ones(8, 1, 10, 10)  # Omniglot's background
    assert torch.allclose(random_affine(white, 0, probability=1.0), white)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"rotation": -1.0}, "rotation"),
        ({"shear": -0.1}, "shear"),
        ({"scale": (1.2, 0.8)}, "scale"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"shift": -0.1}, "shift"),
        ({"probability": 1.5}, "probability"),
    ],
)
def test_bad_affine_arguments_are_refused(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        random_affine(torch.rand(2, 1, 8, 8), 0, **kwargs)


def test_integer_or_flat_images_are_refused():
    with pytest.raises(ConfigError, match="float tensor"):
        random_affine(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), 0)
    with pytest.raises(ConfigError, match=r"\[\.\.\., C, H, W\]"):
        random_affine(torch.rand(8, 8), 0)


# --------------------------------------------------------------------------- AugmentedTasks
def sampler() -> FewShotSampler:
    labels = np.repeat(np.arange(10), 4)
    images = np.random.default_rng(0).integers(0, 256, (labels.size, 9, 9), dtype=np.uint8)
    classes = ClassSet(images, labels, [f"class{i}" for i in range(10)])
    return FewShotSampler(classes, ways=3, shots=1, queries=2, seed=7)


def test_each_task_is_augmented_the_same_in_any_batch():
    tasks = AugmentedTasks(sampler(), random_affine)
    pair, shifted = tasks.batch(range(0, 2)), tasks.batch([1, 5])
    assert torch.equal(pair.support_x[1], shifted.support_x[0])
    assert torch.equal(pair.query_x[1], shifted.query_x[0])
    plain = sampler().batch(range(0, 2))
    assert not torch.equal(pair.support_x, plain.support_x)
    assert torch.equal(pair.support_y, plain.support_y)
    assert torch.equal(pair.query_y, plain.query_y)


def test_support_and_query_get_different_draws():
    seeds: list[int] = []

    def record(images: torch.Tensor, seed: int) -> torch.Tensor:
        seeds.append(seed)
        return images

    AugmentedTasks(sampler(), record).batch(range(3))
    assert len(set(seeds)) == 6


def omniglot_config(*overrides: str) -> RunConfig:
    return RunConfig.from_dict(
        {
            "task": {"family": "omniglot", "ways": 3, "shots": 1, "queries": 1},
            "model": {"kind": "conv4"},
            "algorithm": {"name": "protonet"},
            "eval": {"ways": 3, "shots": 1, "queries": 1},
        }
    ).override(list(overrides))


@pytest.mark.usefixtures("fake_omniglot")
def test_task_augment_affine_distorts_training_tasks_only():
    config = omniglot_config("task.augment=affine")
    train = build_task_family(config, "train")
    assert isinstance(train, AugmentedTasks)
    plain = build_task_family(omniglot_config(), "train")
    assert isinstance(plain, FewShotSampler)
    assert not torch.equal(train.batch([0]).support_x, plain.batch([0]).support_x)
    for split in ("val", "test"):
        assert isinstance(build_task_family(config, split), FewShotSampler)


def test_bad_task_augment_values_are_refused():
    with pytest.raises(ConfigError, match=r"task\.augment must be one of none, affine"):
        omniglot_config("task.augment=rotate")
    sinusoid = RunConfig.from_dict({"task": {"family": "sinusoid", "augment": "affine"}})
    with pytest.raises(ConfigError, match="has no images"):
        build_task_family(sinusoid, "train")
    with pytest.raises(ConfigError, match="meta-RL"):
        RunConfig.from_dict({"task": {"family": "nav2d", "augment": "affine"}})
