"""``MetaLinear``: ``nn.Linear`` that accepts ``params=``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.compat.torchmeta.modules.module import MetaModule, Params


class MetaLinear(nn.Linear, MetaModule):
    """``nn.Linear`` (same arguments and initialisation) whose forward accepts ``params=``.

    ``params`` holds ``weight`` (and ``bias`` when the layer has one), nothing else.
    """

    def forward(self, input: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """``input @ weight.T + bias``, with ``params`` in place of the layer's own if given."""
        if params is None:
            return super().forward(input)
        self._check_params(params)
        return F.linear(input, params["weight"], params.get("bias"))
