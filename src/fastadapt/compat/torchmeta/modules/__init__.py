"""torchmeta's ``torchmeta.modules``: layers whose ``forward`` accepts ``params=``."""

from fastadapt.compat.torchmeta.modules.batchnorm import MetaBatchNorm2d
from fastadapt.compat.torchmeta.modules.container import MetaSequential
from fastadapt.compat.torchmeta.modules.conv import MetaConv2d
from fastadapt.compat.torchmeta.modules.linear import MetaLinear
from fastadapt.compat.torchmeta.modules.module import MetaModule

__all__ = ["MetaBatchNorm2d", "MetaConv2d", "MetaLinear", "MetaModule", "MetaSequential"]
