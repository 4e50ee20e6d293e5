"""Time to build the Omniglot uint8 cache from the two archives, and to open it again.

Decodes all 32,460 PNGs of ``images_background.zip`` and ``images_evaluation.zip`` once
(resized to ``--size``) into a fresh temporary cache, then times a second construction, which
memory-maps the cache instead of decoding.

    python benchmarks/omniglot_cache.py [--root ../shared/data/omniglot] [--size 28]

Prints a table and writes ``benchmarks/results/omniglot_cache.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

from _report import machine, write_json

from fastadapt.datasets.omniglot import Omniglot

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--size", type=int, default=28)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as cache, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # re-packed archives: "not the official file"
        for what in ("build from archives", "open cached (memory-map)"):
            start = time.perf_counter()
            data = Omniglot(args.root, image_size=args.size, cache_dir=cache, progress=False)
            seconds = time.perf_counter() - start
            images = data.characters.images
            rows.append(
                {
                    "step": what,
                    "seconds": seconds,
                    "images": int(images.shape[0]),
                    "bytes": int(images.nbytes),
                }
            )
    print(f"| Omniglot {args.size}x{args.size} cache | seconds | images | MiB |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['step']} | {row['seconds']:.2f} | {row['images']} | "
            f"{row['bytes'] / 2**20:.1f} |"
        )
    path = write_json(
        "omniglot_cache.json",
        {"benchmark": "omniglot_cache", "size": args.size, "rows": rows, "machine": machine()},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
