"""Fully connected networks, e.g. MAML's 1-40-40-1 sinusoid regressor (Finn et al. 2017, §5.1)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
INITS = ("torch", "maml", "glorot")


class MLP(nn.Sequential):
    """``Linear → activation`` for each hidden size, then a final ``Linear`` (the head).

    With ``out_features=None`` there is no head: the network ends with the last hidden
    layer's activation, a feature extractor (e.g. for
    :class:`~fastadapt.algorithms.versa_regression.VersaRegression`). ``embedding_size`` is
    the size of the features before the head, ``hidden[-1]`` (``in_features`` without hidden
    layers).

    ``init="torch"`` keeps PyTorch's default initialisation; ``init="maml"`` is the one of the
    MAML reference code for its sinusoid network: weights from a normal distribution with
    standard deviation 0.01 truncated at two deviations, biases zero. It matters: with the
    default initialisation, long MAML training on sinusoids reaches initialisations whose
    10-step fine-tuning at α = 0.01 diverges on some tasks (``benchmarks/``).
    ``init="glorot"`` draws the weights from Glorot & Bengio's uniform distribution
    ``U(±√(6 / (fan_in + fan_out)))`` with zero biases, the initialisation of the MAML-RL
    reference code's policies (``cbfinn/maml_rl``, ``create_MLP``).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int | None,
        activation: str = "relu",
        init: str = "torch",
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}."
            )
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}.")
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
        if out_features is not None:
            layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        self.embedding_size = sizes[-1]
        if init == "torch":
            return
        for layer in self:
            if isinstance(layer, nn.Linear):
                if init == "maml":
                    nn.init.trunc_normal_(layer.weight, std=0.01, a=-0.02, b=0.02)
                else:
                    nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
