"""``python -m fastadapt`` is the ``fastadapt`` command; ``torchrun -m fastadapt`` runs it in
every process of a distributed job."""

import sys

from fastadapt.cli import main

if __name__ == "__main__":
    sys.exit(main())
