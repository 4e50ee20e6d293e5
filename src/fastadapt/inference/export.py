"""Exports: a trained model as safetensors weights plus a JSON description, without pickles.

An export folder holds two files:

- ``model.safetensors``: the meta-learner's ``state_dict`` (contiguous CPU tensors);
- ``fastadapt.json``: the format name and version, the fastadapt version that wrote it, the
  algorithm, backbone and task shapes, the preprocessing of its images, the SHA-256 of the
  weights, and the run's full configuration, from which :func:`fastadapt.load` rebuilds the
  model. No class names are stored: the classes come from the support set at adapt time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from fastadapt._version import __version__
from fastadapt.engine.build import ALGORITHMS
from fastadapt.errors import RunDirectoryError
from fastadapt.inference.model import LoadedModel
from fastadapt.io.atomic import atomic_write, atomic_write_text

EXPORT_FORMAT = "fastadapt-export"
EXPORT_VERSION = 1
CONFIG_FILE = "fastadapt.json"
WEIGHTS_FILE = "model.safetensors"


def export_model(model: LoadedModel, out: Path) -> Path:
    """Write ``model`` to the new or empty folder ``out``; return the path of its JSON file.

    The weights are written first and ``fastadapt.json`` last, each atomically, so a folder
    with a ``fastadapt.json`` is always a complete export.

    Raises:
        RunDirectoryError: ``out`` is a file or a folder that is not empty.
    """
    _claim_export_folder(out)
    tensors = {
        name: tensor.detach().cpu().clone(memory_format=torch.contiguous_format)
        for name, tensor in model.learner.state_dict().items()
    }
    weights = safetensors.torch.save(
        tensors, metadata={"format": EXPORT_FORMAT, "format_version": str(EXPORT_VERSION)}
    )
    atomic_write(out / WEIGHTS_FILE, lambda handle: handle.write(weights))
    target = out / CONFIG_FILE
    manifest = _manifest(model, hashlib.sha256(weights).hexdigest())
    atomic_write_text(target, json.dumps(manifest, indent=2) + "\n")
    return target


def _manifest(model: LoadedModel, sha256: str) -> dict[str, Any]:
    config = model.config
    classifier = model.learner.problem == "classification"
    fixed_ways = config.task.ways if classifier and ALGORITHMS[config.algorithm.name].head else None
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "fastadapt_version": __version__,
        "algorithm": config.algorithm.name,
        "model": config.model.kind,
        "problem": model.learner.problem,
        "class_agnostic": True,
        "fixed_ways": fixed_ways,
        "trained": {"ways": config.task.ways, "shots": config.task.shots},
        "evaluated": {"ways": config.eval.ways, "shots": config.eval.shots},
        "preprocessing": model.preprocessing.to_json() if model.preprocessing else None,
        "step": model.step,
        "source": model.source.resolve().name,
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256},
        "config": config.to_dict(),
    }


def _claim_export_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"--out {out} is a file; pass a folder for the export.")
    if out.is_dir() and any(out.iterdir()):
        raise RunDirectoryError(
            f"--out {out} is not empty; it was left untouched. Choose a new folder for the export."
        )
    out.mkdir(parents=True, exist_ok=True)
