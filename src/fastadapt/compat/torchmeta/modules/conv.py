"""``MetaConv2d``: ``nn.Conv2d`` that accepts ``params=``."""

from __future__ import annotations

import torch
from torch import nn

from fastadapt.compat.torchmeta.modules.module import MetaModule, Params


class MetaConv2d(nn.Conv2d, MetaModule):
    """``nn.Conv2d`` (same arguments and initialisation) whose forward accepts ``params=``.

    ``params`` holds ``weight`` (and ``bias`` when the layer has one), nothing else.
    """

    def forward(self, input: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """The 2-D convolution, with ``params`` in place of the layer's own if given."""
        if params is None:
            return super().forward(input)
        self._check_params(params)
        return self._conv_forward(input, params["weight"], params.get("bias"))
