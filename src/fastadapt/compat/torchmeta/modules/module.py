"""``MetaModule``: a module whose ``forward`` also accepts ``params=``, as in torchmeta."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from fastadapt.errors import ConfigError

Params = Mapping[str, torch.Tensor]


class MetaModule(nn.Module):
    """Base class of modules whose ``forward(input, params=None)`` can run on other parameters.

    ``params`` maps the names of :meth:`meta_named_parameters` to tensors (for instance the
    adapted parameters :func:`~fastadapt.compat.torchmeta.utils.gradient_based.
    gradient_update_parameters` returns); the module then computes with them instead of its
    own, and gradients flow back through them. Unlike torchmeta, which warned and fell back to
    the module's own parameters (or silently dropped a missing bias), a ``params`` dict whose
    names are not exactly those of :meth:`meta_named_parameters` raises :class:`ConfigError`.
    """

    def meta_named_parameters(
        self, prefix: str = "", recurse: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of every parameter held by a :class:`MetaModule` in this tree.

        Parameters of plain ``nn.Module`` children (say a stock ``nn.Linear`` inside a
        :class:`MetaSequential`) are not meta-parameters: ``params=`` cannot replace them.
        """
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        seen: set[int] = set()
        for module_prefix, module in modules:
            if not isinstance(module, MetaModule):
                continue
            for name, parameter in module.named_parameters(prefix=module_prefix, recurse=False):
                if id(parameter) not in seen:
                    seen.add(id(parameter))
                    yield name, parameter

    def meta_parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The parameters of :meth:`meta_named_parameters`, without their names."""
        for _, parameter in self.meta_named_parameters(recurse=recurse):
            yield parameter

    def get_subdict(self, params: Params | None, key: str | None = None) -> OrderedDict | None:
        """The entries of ``params`` under the child ``key``, with ``key.`` removed.

        ``None`` stays ``None`` (the child then uses its own parameters) and ``key=None`` gives
        all of ``params``. ``params`` must name exactly this module's meta-parameters.
        """
        if params is None:
            return None
        self._check_params(params)
        return _entries_under(params, key)

    def _check_params(self, params: Params) -> None:
        """Refuse a ``params`` mapping whose names are not this module's meta-parameters."""
        if not isinstance(params, Mapping):
            raise TypeError(
                f"params must be a dict of name -> tensor (e.g. OrderedDict("
                f"model.meta_named_parameters())), got {type(params).__name__}."
            )
        if self._modules:
            expected = [name for name, _ in self.meta_named_parameters()]
        else:  # a layer: its own parameters, without walking the module tree
            expected = [name for name, value in self._parameters.items() if value is not None]
        if len(params) == len(expected) and all(name in params for name in expected):
            return
        missing = [name for name in expected if name not in params]
        unexpected = sorted(set(params) - set(expected))
        raise ConfigError(
            f"params for this {type(self).__name__} must name exactly its meta-parameters "
            f"({', '.join(expected) or 'none'}); missing: {', '.join(missing) or 'none'}; "
            f"unexpected: {', '.join(unexpected) or 'none'}. Pass the dict that "
            "gradient_update_parameters returns, or OrderedDict(model.meta_named_parameters()) "
            "with some tensors replaced; to adapt a part of the model, call that part with "
            "model.get_subdict(params, 'part')."
        )


def _entries_under(params: Params, key: str | None) -> OrderedDict:
    if key is None:
        return OrderedDict(params)
    start = key + "."
    return OrderedDict(
        (name[len(start) :], value) for name, value in params.items() if name.startswith(start)
    )
