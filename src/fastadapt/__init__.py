"""fastadapt: meta-learning for PyTorch, with the inner loop batched over tasks."""

from fastadapt._version import __version__
from fastadapt.algorithms.base import GaussianPredictor, LossOutput, MetaLearner, Predictor
from fastadapt.algorithms.maml import MAML
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.algorithms.versa import Versa
from fastadapt.algorithms.versa_regression import VersaRegression
from fastadapt.config import RunConfig, list_presets, load_preset
from fastadapt.engine.evaluate import Estimate, evaluate
from fastadapt.errors import (
    CheckpointError,
    ConfigError,
    DistributedError,
    FastAdaptError,
    NonFiniteLossError,
    RunDirectoryError,
    SupportSetError,
)
from fastadapt.inference.load import load
from fastadapt.inference.model import LoadedModel
from fastadapt.nn.conv4 import Conv4
from fastadapt.nn.mlp import MLP
from fastadapt.nn.resnet12 import ResNet12
from fastadapt.tasks.sinusoid import SinusoidTasks
from fastadapt.tasks.task import Task, TaskBatch

__all__ = [
    "MAML",
    "MLP",
    "CheckpointError",
    "ConfigError",
    "Conv4",
    "DistributedError",
    "Estimate",
    "FastAdaptError",
    "GaussianPredictor",
    "LoadedModel",
    "LossOutput",
    "MatchingNet",
    "MetaLearner",
    "NonFiniteLossError",
    "Predictor",
    "ProtoNet",
    "ResNet12",
    "RunConfig",
    "RunDirectoryError",
    "SinusoidTasks",
    "SupportSetError",
    "Task",
    "TaskBatch",
    "Versa",
    "VersaRegression",
    "__version__",
    "evaluate",
    "list_presets",
    "load",
    "load_preset",
]
