"""torchmeta's API on fastadapt: change ``torchmeta`` to ``fastadapt.compat.torchmeta``.

torchmeta (Deleu et al. 2019) pins ``torch<1.10`` and no longer installs beside current
PyTorch. This package mirrors the import paths of the names its users rely on, each a thin
adapter over fastadapt's own machinery:

- :mod:`.datasets.helpers` (``omniglot``, ``miniimagenet``, ``tieredimagenet``, ``cifar_fs``,
  ``fc100``): the registry's class splits, episodes of
  :class:`~fastadapt.tasks.sampler.FewShotSampler`;
- :mod:`.utils.data` (``BatchMetaDataLoader``): :class:`~fastadapt.tasks.loader.TaskLoader`;
- :mod:`.modules` (``MetaModule``, ``MetaSequential``, ``MetaLinear``, ``MetaConv2d``,
  ``MetaBatchNorm2d``): the stock layers, computing with ``params=`` when given;
- :mod:`.utils.gradient_based` (``gradient_update_parameters``): MAML's inner step;
- :mod:`.utils.prototype` and :mod:`.utils.matching`: ProtoNet's and MatchingNet's heads.

What differs from torchmeta is listed in ``docs/migrating-from-torchmeta.md``.
"""

from fastadapt.compat.torchmeta import datasets, modules, utils

__all__ = ["datasets", "modules", "utils"]
