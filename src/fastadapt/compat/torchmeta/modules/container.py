"""``MetaSequential``: ``nn.Sequential`` that hands each child its share of ``params=``."""

from __future__ import annotations

import torch
from torch import nn

from fastadapt.compat.torchmeta.modules.module import MetaModule, Params, _entries_under


class MetaSequential(nn.Sequential, MetaModule):
    """``nn.Sequential`` whose forward accepts ``params=``.

    Each :class:`MetaModule` child gets the entries of ``params`` under its name (``"0.weight"``
    becomes child ``0``'s ``"weight"``); plain ``nn.Module`` children (activations, pooling, a
    stock layer) are called as usual, with their own parameters.
    """

    def forward(self, input: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """The children in order, each meta-child on its entries of ``params`` if given."""
        if params is not None:
            self._check_params(params)
        for name, module in self.named_children():
            if isinstance(module, MetaModule):
                child_params = None if params is None else _entries_under(params, name)
                input = module(input, params=child_params)
            else:
                input = module(input)
        return input
