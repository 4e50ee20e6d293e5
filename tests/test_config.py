"""Configuration: presets load, overrides are typed, bad values are refused with a hint."""

from __future__ import annotations

import pytest
import torch

from fastadapt.config import RL_FAMILIES, RunConfig, list_presets, load_preset
from fastadapt.engine.build import build_learner
from fastadapt.errors import ConfigError
from fastadapt.rl.nav2d import Navigation2D
from fastadapt.rl.run import build_rl_learner

#: Presets whose paper reports no number for their dataset (MeLU has MovieLens-1M only; MAML
#: gives half-cheetah velocity as a curve, Figure 5).
WITHOUT_PAPER_NUMBERS = {"movielens100k-melu", "cheetah-vel-maml-trpo"}


def test_every_shipped_preset_loads_and_builds():
    assert "sinusoid-maml" in list_presets()
    for name in list_presets():
        config = load_preset(name)
        assert config.preset == name and config.reference.paper and config.reference.table
        assert bool(config.reference.values) != (name in WITHOUT_PAPER_NUMBERS)
        if config.task.family in RL_FAMILIES:
            build_rl_learner(config, Navigation2D())  # its environment may need the rl extra
        else:
            build_learner(config)


def test_sinusoid_preset_is_the_papers_setting():
    config = load_preset("sinusoid-maml")
    assert (config.task.shots, config.model.hidden, config.algorithm.inner_steps) == (
        10,
        [40, 40],
        1,
    )
    assert (config.algorithm.inner_lr, config.train.meta_batch, config.train.steps) == (
        0.01,
        25,
        70000,
    )
    assert config.train.optimizer == "adam" and config.eval.shots == 5


def test_overrides_parse_toml_literals_and_round_trip():
    config = load_preset("sinusoid-maml").override(
        [
            "eval.report_steps=[1, 2]",
            "algorithm.first_order=true",
            "train.lr=1e-4",
            "train.task_chunk=5",
            "model.activation=tanh",
        ]
    )
    assert config.eval.report_steps == [1, 2] and config.algorithm.first_order is True
    assert config.train.lr == 1e-4 and config.train.task_chunk == 5
    assert RunConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("train.stpes=5", "Did you mean train.steps"),
        ("steps=5", "unknown --set key 'steps'"),
        ("train.steps=1.5", "train.steps must be an integer"),
        ("train.steps=true", "train.steps must be an integer"),
        ("algorithm.first_order=1", "must be true or false"),
        ("eval.report_steps=3", "must be a list"),
        ("task.shots=-1", "task.shots must be positive"),
        ("eval.tasks=0", "eval.tasks must be positive"),
        ("algorithm.inner_steps=0", "algorithm.inner_steps must be positive"),
        ("model.hidden=[40, 0]", "model.hidden sizes must be positive"),
        ("no-equals-sign", "expects key=value"),
        ("eval.later_lr_scale=0.5", "applies to meta-RL families only"),
        ("eval.later_lr_scale=0", "eval.later_lr_scale must be positive"),
        ("eval.env_steps=4000", "eval.env_steps applies to meta-RL families only"),
        ("eval.env_steps=0", "eval.env_steps must be positive"),
    ],
)
def test_bad_overrides_are_refused(assignment, message):
    with pytest.raises(ConfigError, match=message):
        load_preset("sinusoid-maml").override([assignment])


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("algorithm.name=leo", "unknown algorithm.name"),
        ("model.kind=resnet", "unknown model.kind"),
        ("task.family=quickdraw", "unknown task.family"),
        ("model.activation=swish", "unknown activation"),
        ("algorithm.batch_mode=gpu", "batch mode must be one of"),
    ],
)
def test_unknown_component_names_are_refused_when_building(assignment, message):
    config = load_preset("sinusoid-maml").override([assignment])
    with pytest.raises(ConfigError, match=message):
        build_learner(config)


def test_maml_initialisation_is_truncated_normal_with_zero_bias():
    from fastadapt.nn.mlp import MLP

    model = MLP(1, [40, 40], 1, init="maml")
    weights = torch.cat([model[i].weight.flatten() for i in (0, 2, 4)])
    assert weights.abs().max() <= 0.02 and 0.005 < weights.std() < 0.01
    assert all(model[i].bias.abs().sum() == 0 for i in (0, 2, 4))
    with pytest.raises(ValueError, match="unknown init"):
        MLP(1, [4], 1, init="xavier")


def test_glorot_initialisation_is_uniform_in_the_glorot_bound_with_zero_bias():
    from fastadapt.nn.mlp import MLP

    model = MLP(2, [100, 100], 2, init="glorot")
    for index, (fan_in, fan_out) in zip((0, 2, 4), [(2, 100), (100, 100), (100, 2)], strict=True):
        bound = (6 / (fan_in + fan_out)) ** 0.5
        weight = model[index].weight
        assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
        assert model[index].bias.abs().sum() == 0


def test_an_unknown_policy_initialisation_is_a_config_error():
    from fastadapt.rl.run import build_env, build_rl_learner

    config = load_preset("nav2d-maml-trpo").override(["model.init=xavier"])
    with pytest.raises(ConfigError, match="unknown init 'xavier'"):
        build_rl_learner(config, build_env(config))


def test_algorithm_and_family_must_fit():
    sinusoid_protonet = load_preset("sinusoid-maml").override(["algorithm.name=protonet"])
    with pytest.raises(ConfigError, match="protonet solves classification tasks"):
        build_learner(sinusoid_protonet)
    metric = load_preset("protonet-omniglot-1shot")
    assert metric.task.ways == 60 and metric.eval.ways == 5
    assert build_learner(metric).embedding(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
