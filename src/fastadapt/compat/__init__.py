"""Compatibility layers: code written against other meta-learning libraries, run on fastadapt.

:mod:`fastadapt.compat.torchmeta` offers the names torchmeta code uses, so that such code
migrates by changing its imports (see ``docs/migrating-from-torchmeta.md``).
"""
