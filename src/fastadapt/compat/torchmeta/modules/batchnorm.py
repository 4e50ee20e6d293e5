"""``MetaBatchNorm2d``: ``nn.BatchNorm2d`` that accepts ``params=``."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from fastadapt.compat.torchmeta.modules.module import MetaModule, Params


class MetaBatchNorm2d(nn.BatchNorm2d, MetaModule):
    """``nn.BatchNorm2d`` (same arguments) whose forward accepts ``params=``.

    ``params`` replaces the affine ``weight`` and ``bias`` only (an ``affine=False`` layer takes
    an empty dict); the running statistics and ``num_batches_tracked`` stay the module's own
    buffers and follow ``nn.BatchNorm2d`` exactly: batch statistics in training mode (updating
    the running ones when ``track_running_stats``), running statistics in eval mode if
    tracked. MAML's setting is ``track_running_stats=False``: batch statistics always.
    """

    def forward(self, input: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """Batch normalisation, with ``params`` in place of the layer's own if given.

        ``torch.func.functional_call`` runs ``nn.BatchNorm2d``'s own forward on ``params``, so
        the use and update of the running statistics are exactly the stock layer's.
        """
        if params is None:
            return super().forward(input)
        self._check_params(params)
        return functional_call(self, dict(params), (input,))
