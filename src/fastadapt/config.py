"""Run configuration: typed sections, presets shipped as TOML, ``--set key=value`` overrides.

A configuration is its sections (``task``, ``data``, ``model``, ``algorithm``, ``train``,
``eval``, and ``rl`` for meta-reinforcement learning) plus the preset's ``reference`` (the
paper, table and numbers it targets). Every field has a type; an override of an unknown key
or of the wrong type is refused with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastadapt.algorithms.matching import SIMILARITIES
from fastadapt.algorithms.reptile import INNER_OPTIMIZERS, INNER_STATES
from fastadapt.errors import ConfigError
from fastadapt.nn.conv4 import DOWNSAMPLING
from fastadapt.nn.precision import PRECISIONS

RL_FAMILIES = ("nav2d", "cheetah-vel", "cheetah-dir")
"""The meta-reinforcement-learning task families (:mod:`fastadapt.rl`)."""
NAV2D_REWARDS = ("distance", "squared")
"""2D navigation rewards: minus the distance to the goal, or minus its square."""

TRAIN_AUGMENTATIONS = ("none", "affine")
"""``task.augment``: the training images as drawn, or each one distorted by a random affine map
(:func:`fastadapt.tasks.augment.random_affine`, Koch et al. 2015); never validation or test."""

LR_SCHEDULES = ("step", "linear")
"""``step``: ``lr · lr_decay ** (s // lr_decay_every)``; ``linear``: from ``lr`` at step 0 down to
0 at the last step (Reptile's annealed outer step size)."""

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


@dataclass
class TaskConfig:
    """The training tasks; ``augment`` (image families only) distorts their images, one of
    :data:`TRAIN_AUGMENTATIONS`."""

    family: str = "sinusoid"
    ways: int = 5
    shots: int = 10
    queries: int = 10
    augment: str = "none"


@dataclass
class DataConfig:
    """Where a dataset (``task.family`` = its name) lives, how images are decoded, which split
    of an image dataset's classes into train / val / test is used (``split``; ``""``: the
    dataset's standard split; Omniglot: ``"vinyals"``, its standard, ``"vinyals-trainval"``,
    the same but training on its train and val classes, or ``"maml"`` / ``"versa"``, the random
    1100 / 100 / 423 character split of the MAML reference code that VERSA reuses), and the
    seed of the cold-start split of a ratings dataset (:mod:`fastadapt.recsys.cold_start`)."""

    root: str = ""
    image_size: int = 28
    split: str = ""
    split_seed: int = 0


@dataclass
class ModelConfig:
    kind: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [40, 40])
    activation: str = "relu"
    init: str = "torch"
    downsample: str = "pool"
    blocks: int = 4
    ceil_mode: bool = False
    dropout: float = 0.0
    embedding_dim: int = 32
    item_prior: bool = False
    """``model.kind=melu``: predict corrections of each item's shrunk mean training rating
    (:class:`~fastadapt.recsys.melu.MeLU`'s ``item_prior``)."""
    item_prior_shrinkage: float = 5.0
    """Pseudo-ratings of the global mean in each item's prior
    (:func:`~fastadapt.recsys.mean_rating.item_means`)."""


@dataclass
class AlgorithmConfig:
    """The meta-learner; ``adapt`` names the modules MAML's inner loop adapts (MeLU:
    ``["decision"]``), empty for every parameter (or the head, with ``anil``)."""

    name: str = "maml"
    inner_steps: int = 1
    inner_lr: float = 0.01
    first_order: bool = False
    anil: bool = False
    adapt: list[str] = field(default_factory=list)
    meta_sgd: bool = False
    per_step_lr: bool = False
    batch_mode: str = "auto"
    distance: str = "euclidean"
    fce: bool = False
    read_steps: int | None = None
    similarity: str = "cosine"
    inner_optimizer: str = "sgd"
    inner_batch: int | None = None
    inner_state: str = "per_task"
    samples: int = 10
    per_task_batch_norm: bool = False
    """VERSA: each task's support and query sets get batch statistics of their own
    (:class:`~fastadapt.algorithms.versa.Versa`'s ``per_task_batch_norm``)."""


@dataclass
class TrainConfig:
    """How a run trains (:class:`fastadapt.engine.trainer.TrainSchedule` documents the
    schedule's keys). ``precision`` is ``"float32"`` or ``"bfloat16"``: mixed precision, each
    training step's forward pass under autocast with the backbone in bfloat16 and the heads,
    losses, weights and optimiser in float32 (:mod:`fastadapt.nn.precision`); validation and
    evaluation run in float32."""

    steps: int = 70_000
    max_hours: float | None = None
    meta_batch: int = 25
    optimizer: str = "adam"
    lr: float = 0.001
    lr_decay: float = 1.0
    lr_decay_every: int | None = None
    lr_schedule: str = "step"
    weight_decay: float = 0.0
    task_chunk: int | None = None
    precision: str = "float32"
    val_every: int = 1000
    val_tasks: int = 100
    checkpoint_every: int = 1000
    log_every: int = 100
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    tensorboard: bool = False


@dataclass
class EvalConfig:
    """The test protocol; ``partition`` is the cold-start partition of a ratings family
    (``warm``, ``new-users``, ``new-items`` or ``new-both``), ignored by other families.
    ``later_lr_scale`` (meta-RL only) multiplies the step size of every test-time
    policy-gradient step after the first: the MAML paper halves it (Finn et al. 2017,
    Appendix A.2), i.e. 0.5. ``env_steps`` (meta-RL only) samples each test step as the
    reference code's sampler does: whole episodes until at least that many environment steps
    per task (:func:`fastadapt.rl.episodes.rollout_budget`); ``None``: ``rl.trajectories``
    episodes per step."""

    ways: int = 5
    shots: int = 5
    queries: int = 100
    tasks: int = 600
    inner_steps: int = 10
    inner_lr: float | None = None
    report_steps: list[int] = field(default_factory=lambda: [0, 1, 5, 10])
    seed: int = 0
    batch: int = 100
    inner_batch: int | None = None
    partition: str = "new-users"
    later_lr_scale: float = 1.0
    env_steps: int | None = None


@dataclass
class RLConfig:
    """Meta-reinforcement learning (``task.family`` = ``nav2d``, ``cheetah-vel`` or
    ``cheetah-dir``; :mod:`fastadapt.rl`), Finn et al. 2017 §5.3 and Appendix A.2.

    ``trajectories`` are sampled per task for each policy-gradient step (training and test);
    returns are discounted by ``gamma`` with GAE's ``gae_lambda`` (1: discounted return minus
    the linear baseline, whose ridge term is ``baseline_reg``). The outer step is TRPO
    (``train.optimizer = "trpo"``: ``max_kl``, ``cg_iters`` conjugate-gradient iterations with
    ``cg_damping``, backtracking by ``ls_backtrack`` up to ``ls_steps`` times) or Adam
    (``train.optimizer = "adam"``, ``train.lr``). ``nav2d_reward`` is ``distance`` (negative
    Euclidean distance to the goal, the reference code behind the paper's numbers) or
    ``squared`` (the paper's text). The policy's log standard deviation starts at
    ``init_log_std``. With ``env_steps``, every training rollout samples whole episodes until
    that many environment steps per task instead of ``trajectories`` episodes, as the
    reference code's sampler does (its 2D-navigation run: 2000 per task;
    :func:`fastadapt.rl.episodes.rollout_budget`).
    """

    horizon: int = 100
    trajectories: int = 20
    gamma: float = 0.99
    gae_lambda: float = 1.0
    baseline_reg: float = 1e-5
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_backtrack: float = 0.8
    ls_steps: int = 15
    nav2d_reward: str = "distance"
    init_log_std: float = 0.0
    env_steps: int | None = None


@dataclass
class Reference:
    """What a preset reproduces; not used by training, printed beside our numbers."""

    paper: str = ""
    table: str = ""
    protocol: str = ""
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class RunConfig:
    preset: str = "custom"
    description: str = ""
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    reference: Reference = field(default_factory=Reference)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build a config from nested dicts (a preset file or a checkpoint), checking types."""
        config = cls()
        for key, value in flatten(data).items():
            _assign(config, key, value, origin="configuration")
        config.validate()
        return config

    def override(self, assignments: list[str]) -> RunConfig:
        """A copy with ``key=value`` assignments applied (values parsed as TOML literals)."""
        config = RunConfig.from_dict(self.to_dict())
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep or not key.strip():
                raise ConfigError(
                    f"--set expects key=value, got {assignment!r}; e.g. --set train.steps=1000."
                )
            _assign(config, key.strip(), _parse_literal(raw.strip()), origin="--set")
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse values that cannot work, naming the key and how to fix it."""
        positive = {
            "task.ways": self.task.ways,
            "task.shots": self.task.shots,
            "task.queries": self.task.queries,
            "algorithm.inner_steps": self.algorithm.inner_steps,
            "algorithm.inner_lr": self.algorithm.inner_lr,
            "algorithm.samples": self.algorithm.samples,
            "model.blocks": self.model.blocks,
            "train.steps": self.train.steps,
            "train.meta_batch": self.train.meta_batch,
            "train.lr": self.train.lr,
            "train.lr_decay": self.train.lr_decay,
            "train.val_every": self.train.val_every,
            "train.val_tasks": self.train.val_tasks,
            "train.checkpoint_every": self.train.checkpoint_every,
            "train.log_every": self.train.log_every,
            "eval.ways": self.eval.ways,
            "eval.shots": self.eval.shots,
            "eval.queries": self.eval.queries,
            "eval.tasks": self.eval.tasks,
            "eval.inner_steps": self.eval.inner_steps,
            "eval.batch": self.eval.batch,
            "eval.later_lr_scale": self.eval.later_lr_scale,
            "data.image_size": self.data.image_size,
            "model.embedding_dim": self.model.embedding_dim,
            "rl.horizon": self.rl.horizon,
            "rl.trajectories": self.rl.trajectories,
            "rl.baseline_reg": self.rl.baseline_reg,
            "rl.max_kl": self.rl.max_kl,
            "rl.cg_iters": self.rl.cg_iters,
            "rl.ls_steps": self.rl.ls_steps,
        }
        optional_positive = {
            "train.task_chunk": self.train.task_chunk,
            "train.max_hours": self.train.max_hours,
            "train.threads": self.train.threads,
            "train.lr_decay_every": self.train.lr_decay_every,
            "algorithm.read_steps": self.algorithm.read_steps,
            "algorithm.inner_batch": self.algorithm.inner_batch,
            "eval.inner_lr": self.eval.inner_lr,
            "eval.inner_batch": self.eval.inner_batch,
            "eval.env_steps": self.eval.env_steps,
            "rl.env_steps": self.rl.env_steps,
        }
        positive.update({k: v for k, v in optional_positive.items() if v is not None})
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(
                    f"{key} must be positive, got {value!r}; set it with --set {key}=<value>."
                )
        choices = {
            "task.augment": (self.task.augment, TRAIN_AUGMENTATIONS),
            "train.lr_schedule": (self.train.lr_schedule, LR_SCHEDULES),
            "train.precision": (self.train.precision, tuple(PRECISIONS)),
            "algorithm.inner_optimizer": (self.algorithm.inner_optimizer, INNER_OPTIMIZERS),
            "algorithm.inner_state": (self.algorithm.inner_state, INNER_STATES),
            "model.downsample": (self.model.downsample, DOWNSAMPLING),
            "algorithm.similarity": (self.algorithm.similarity, SIMILARITIES),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(
                    f"{key} must be one of {', '.join(allowed)}, got {value!r}; "
                    f"e.g. --set {key}={allowed[0]}."
                )
        for key, value in {
            "rl.gamma": self.rl.gamma,
            "rl.gae_lambda": self.rl.gae_lambda,
            "rl.ls_backtrack": self.rl.ls_backtrack,
        }.items():
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"{key} must be in (0, 1], got {value!r}; e.g. --set {key}=0.99.")
        if self.rl.nav2d_reward not in NAV2D_REWARDS:
            raise ConfigError(
                f"rl.nav2d_reward must be one of {', '.join(NAV2D_REWARDS)}, got "
                f"{self.rl.nav2d_reward!r}; e.g. --set rl.nav2d_reward=distance."
            )
        if self.task.family not in RL_FAMILIES:
            for key, value, default in (
                ("eval.later_lr_scale", self.eval.later_lr_scale, 1.0),
                ("eval.env_steps", self.eval.env_steps, None),
            ):
                if value != default:
                    raise ConfigError(
                        f"{key} applies to meta-RL families only ({', '.join(RL_FAMILIES)}), "
                        f"not {self.task.family!r}; leave it at {default}."
                    )
        if self.task.family in RL_FAMILIES and self.task.augment != "none":
            raise ConfigError(
                f"task.augment={self.task.augment!r} distorts images; the meta-RL family "
                f"{self.task.family!r} has none. Set task.augment=none."
            )
        if self.task.family in RL_FAMILIES and self.train.precision != "float32":
            raise ConfigError(
                f"train.precision={self.train.precision!r} is not available for meta-RL "
                f"({self.task.family!r}), whose small policies gain nothing from it; "
                "leave train.precision at float32."
            )
        if self.algorithm.per_task_batch_norm and self.algorithm.name != "versa":
            raise ConfigError(
                "algorithm.per_task_batch_norm is an option of algorithm.name=versa, not "
                f"{self.algorithm.name!r}; remove it."
            )
        if self.model.item_prior and self.model.kind != "melu":
            raise ConfigError(
                f"model.item_prior is an option of model.kind=melu, not {self.model.kind!r}; "
                "remove it."
            )
        if not self.model.item_prior_shrinkage >= 0.0:
            raise ConfigError(
                "model.item_prior_shrinkage must be >= 0, got "
                f"{self.model.item_prior_shrinkage!r}; e.g. --set model.item_prior_shrinkage=5."
            )
        if not self.train.weight_decay >= 0.0:
            raise ConfigError(
                f"train.weight_decay must be >= 0, got {self.train.weight_decay!r}; "
                "e.g. --set train.weight_decay=1e-4."
            )
        if not 0.0 <= self.model.dropout < 1.0:
            raise ConfigError(
                f"model.dropout must be a probability in [0, 1), got {self.model.dropout!r}; "
                "e.g. --set model.dropout=0.1."
            )
        if any(hidden < 1 for hidden in self.model.hidden):
            raise ConfigError(f"model.hidden sizes must be positive, got {self.model.hidden}.")
        if any(step < 0 for step in self.eval.report_steps):
            raise ConfigError(
                f"eval.report_steps must be >= 0, got {self.eval.report_steps}; "
                "e.g. --set eval.report_steps=[0,1,5,10]."
            )


def list_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    files = resources.files("fastadapt.presets").iterdir()
    return sorted(f.name[: -len(".toml")] for f in files if f.name.endswith(".toml"))


def load_preset(name: str) -> RunConfig:
    """The configuration of a shipped preset; an unknown name suggests the closest ones."""
    names = list_presets()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"unknown preset {name!r}.{hint} Run `fastadapt presets` to list them "
            f"({', '.join(names)})."
        )
    text = resources.files("fastadapt.presets").joinpath(f"{name}.toml").read_text("utf-8")
    return RunConfig.from_dict(tomllib.loads(text))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as one level of dotted keys (``train.steps``)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path != "reference.values":
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _known_keys(config: RunConfig) -> list[str]:
    return sorted(flatten(config.to_dict()))


def _assign(config: RunConfig, key: str, value: Any, origin: str) -> None:
    section_name, _, field_name = key.rpartition(".")
    target: Any = getattr(config, section_name, None) if section_name else config
    known = _known_keys(config)
    if key not in known or target is None:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown {origin} key {key!r}.{hint} Known keys: {', '.join(known)}.")
    expected = typing.get_type_hints(type(target))[field_name]
    setattr(target, field_name, _coerce(key, value, expected))


def _coerce(key: str, value: Any, expected: Any) -> Any:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(expected) if t is not type(None)]
        if value is None or value == "none":
            return None
        return _coerce(key, value, options[0])
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list):
            raise _type_error(key, value, "a list like [1, 2]")
        return [_coerce(key, item, item_type) for item in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, "a table of numbers")
        return {str(k): _coerce(key, v, float) for k, v in value.items()}
    if expected is bool:
        if not isinstance(value, bool):
            raise _type_error(key, value, "true or false")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, value, "an integer")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(key, value, "a number")
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            raise _type_error(key, value, "a string")
        return value
    raise TypeError(f"unsupported config field type {expected!r} for {key}")


def _type_error(key: str, value: Any, wanted: str) -> ConfigError:
    return ConfigError(
        f"{key} must be {wanted}, got {value!r} ({type(value).__name__}); "
        f"e.g. --set {key}=<{wanted}>."
    )


def _parse_literal(raw: str) -> Any:
    """A ``--set`` value: a TOML literal (``3``, ``0.1``, ``true``, ``[1, 5]``) or a bare string."""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw
