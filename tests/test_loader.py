"""TaskLoader (steps as pure functions, any number of workers) and random_crop_flip."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from fastadapt.datasets.class_set import ClassSet
from fastadapt.errors import ConfigError
from fastadapt.tasks.augment import random_crop_flip
from fastadapt.tasks.loader import TaskLoader
from fastadapt.tasks.sampler import FewShotSampler
from fastadapt.tasks.task import TaskBatch


def sampler(seed: int = 0) -> FewShotSampler:
    labels = np.repeat(np.arange(12), 6)
    images = np.random.default_rng(2).integers(0, 256, (labels.size, 6, 6, 3), dtype=np.uint8)
    classes = ClassSet(images, labels, [f"class{i}" for i in range(12)])
    return FewShotSampler(classes, ways=3, shots=2, queries=1, seed=seed)


def same(a: TaskBatch, b: TaskBatch) -> bool:
    fields = ("support_x", "support_y", "query_x", "query_y")
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in fields)


def flip_crop(images: torch.Tensor, seed: int) -> torch.Tensor:
    return random_crop_flip(images, seed, padding=1)


def test_step_s_is_the_sampler_batch_of_its_episodes():
    tasks = sampler()
    loader = TaskLoader(tasks, meta_batch=4, start_step=2, steps=3)
    batches = list(loader)
    assert len(loader) == 3 and len(batches) == 3
    for step, batch in zip((2, 3, 4), batches):
        assert same(batch, tasks.batch(range(4 * step, 4 * step + 4)))


def test_workers_change_nothing():
    plain = list(TaskLoader(sampler(1), 3, steps=5, augment=flip_crop))
    parallel = list(TaskLoader(sampler(1), 3, steps=5, workers=2, augment=flip_crop))
    assert len(parallel) == 5
    assert all(same(a, b) for a, b in zip(plain, parallel))


def test_resuming_continues_the_same_stream():
    full = list(TaskLoader(sampler(), 2, steps=6, augment=flip_crop))
    resumed = list(TaskLoader(sampler(), 2, start_step=4, steps=2, augment=flip_crop))
    assert same(full[4], resumed[0]) and same(full[5], resumed[1])
    endless = TaskLoader(sampler(), 2, augment=flip_crop)
    assert all(same(a, b) for a, b in zip(itertools.islice(endless, 6), full[:6]))
    with pytest.raises(TypeError, match="endless"):
        len(endless)


def test_augment_gets_reproducible_seeds_per_episode_and_part():
    seeds: list[int] = []

    def record(images: torch.Tensor, seed: int) -> torch.Tensor:
        seeds.append(seed)
        return images + 1

    tasks = sampler()
    batch = next(iter(TaskLoader(tasks, 2, steps=2, augment=record)))
    assert torch.equal(batch.support_x, tasks.batch(range(2)).support_x + 1)
    assert torch.equal(batch.support_y, tasks.batch(range(2)).support_y)
    seeds.clear()
    list(TaskLoader(tasks, 2, steps=2, augment=record))
    by_two = list(seeds)  # 4 episodes, support then query of each
    seeds.clear()
    list(TaskLoader(tasks, 4, steps=1, augment=record))
    assert sorted(seeds) == sorted(by_two) and len(set(by_two)) == 8
    assert all(0 <= seed < 2**63 for seed in seeds)


def test_pin_memory():
    if torch.cuda.is_available():
        batch = next(iter(TaskLoader(sampler(), 2, steps=1, pin_memory=True)))
        assert batch.support_x.is_pinned() and batch.query_y.is_pinned()
    else:
        with pytest.warns(UserWarning, match="no CUDA device"):
            loader = TaskLoader(sampler(), 2, steps=1, pin_memory=True)
        assert same(next(iter(loader)), sampler().batch(range(2)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"meta_batch": 0}, "meta_batch must be an integer >= 1, got 0"),
        ({"meta_batch": 2, "start_step": -1}, "start_step must be an integer >= 0"),
        ({"meta_batch": 2, "steps": -3}, "steps must be an integer >= 0"),
        ({"meta_batch": 2, "workers": 1.5}, "workers must be an integer"),
    ],
)
def test_bad_loader_arguments_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TaskLoader(sampler(), **kwargs)


# ------------------------------------------------------------------------------ augmentation
def test_crop_flip_keeps_shape_and_is_a_pure_function_of_the_seed():
    images = torch.rand(2, 5, 3, 8, 8)
    out = random_crop_flip(images, seed=4)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.equal(out, random_crop_flip(images, seed=4))
    assert not torch.equal(out, random_crop_flip(images, seed=5))
    assert torch.equal(out[1, 2], random_crop_flip(images.clone(), seed=4)[1, 2])


def test_without_padding_each_image_is_itself_or_its_mirror():
    images = torch.rand(40, 1, 5, 5)
    out = random_crop_flip(images, seed=0, padding=0)
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images)])
    mirrored = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, images)])
    assert bool((kept | mirrored).all()) and kept.any() and mirrored.any()


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_every_output_is_a_crop_of_the_padded_image_possibly_mirrored(mode):
    images = torch.rand(30, 2, 5, 5)
    padding = 2
    out = random_crop_flip(images, seed=9, padding=padding, mode=mode)
    padded = torch.nn.functional.pad(images, (padding,) * 4, mode=mode)
    offsets = set()
    for image, source in zip(out, padded):
        matches = [
            (top, left, flip)
            for top in range(2 * padding + 1)
            for left in range(2 * padding + 1)
            for flip in (False, True)
            if torch.equal(
                image,
                source[:, top : top + 5, left : left + 5].flip(-1)
                if flip
                else source[:, top : top + 5, left : left + 5],
            )
        ]
        assert matches, "an output is not a crop of its padded image"
        offsets.add(matches[0][:2])
    assert len(offsets) > 5  # the offsets vary


def test_bad_augment_arguments_are_refused():
    with pytest.raises(ConfigError, match="padding"):
        random_crop_flip(torch.rand(2, 1, 4, 4), 0, padding=-1)
    with pytest.raises(ConfigError, match="reflect padding"):
        random_crop_flip(torch.rand(2, 1, 4, 4), 0, padding=4, mode="reflect")
    with pytest.raises(ConfigError, match=r"\[\.\.\., C, H, W\]"):
        random_crop_flip(torch.rand(4, 4), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        random_crop_flip(torch.rand(0, 1, 4, 4), 0)  # an empty batch is fine
