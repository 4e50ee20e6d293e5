"""``fastadapt.load``: a trained model from a run folder or an export folder.

A run folder's checkpoint is read with ``torch.load(..., weights_only=True)``; an export's
weights with safetensors. Either way the model is rebuilt from the stored configuration by the
same builders as training, and nothing is unpickled as code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from fastadapt._version import __version__
from fastadapt.config import RunConfig
from fastadapt.engine.build import ALGORITHMS, MODELS, TASK_FAMILIES, build_learner
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.run import checkpoint_path
from fastadapt.errors import CheckpointError, ConfigError, RunDirectoryError
from fastadapt.inference.export import CONFIG_FILE, EXPORT_FORMAT, EXPORT_VERSION, WEIGHTS_FILE
from fastadapt.inference.model import LoadedModel
from fastadapt.inference.preprocess import Preprocessing


def load(path: str | os.PathLike[str], *, checkpoint: str = "best") -> LoadedModel:
    """The trained meta-learner of a run folder or an export folder, with its preprocessing.

    Args:
        path: a run folder (``fastadapt train --out``) or an export folder
            (``fastadapt export --out``, recognised by its ``fastadapt.json``).
        checkpoint: for a run folder, ``"best"`` (``checkpoints/best.pt``, else ``last.pt``)
            or ``"last"``.

    Raises:
        RunDirectoryError: ``path`` is neither a run folder nor an export folder.
        CheckpointError: the checkpoint or export is missing, truncated, not fastadapt's, or
            needs an algorithm, backbone or format version that this fastadapt does not have.

    Example:
        ```python
        model = fastadapt.load("runs/protonet-omniglot-1shot")
        predictor = model.adapt(model.preprocess(support_files), support_labels)
        classes = predictor.predict(model.preprocess(query_files))
        ```
    """
    folder = Path(path)
    if (folder / CONFIG_FILE).is_file():
        return _load_export(folder)
    if not folder.is_dir():
        raise RunDirectoryError(
            f"{folder} is not a folder; pass a run folder (`fastadapt train --out`) or an "
            "export folder (`fastadapt export --out`)."
        )
    if not (folder / "checkpoints").is_dir():
        raise RunDirectoryError(
            f"{folder} holds no checkpoint (no checkpoints/ folder) and is not an export (no "
            f"{CONFIG_FILE}); pass the --out folder of `fastadapt train` or `fastadapt export`."
        )
    state = load_checkpoint(checkpoint_path(folder, checkpoint))
    return _assemble(state.config, state.learner, folder, state.step, "the fastadapt that wrote it")


def _load_export(folder: Path) -> LoadedModel:
    manifest_path = folder / CONFIG_FILE
    try:
        manifest = json.loads(manifest_path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{manifest_path} is not valid JSON ({error}); it is truncated or not a fastadapt "
            "export. Export the run again."
        ) from error
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f'{manifest_path} is not a fastadapt export (it lacks "format": "{EXPORT_FORMAT}").'
        )
    written_by = f"fastadapt {manifest.get('fastadapt_version', '(unknown version)')}"
    version = manifest.get("format_version")
    if version != EXPORT_VERSION:
        newer = isinstance(version, int) and version > EXPORT_VERSION
        hint = (
            "upgrade fastadapt to load it"
            if newer
            else f"load it with {written_by}, or export the run again"
        )
        raise CheckpointError(
            f"{folder} is an export of format version {version!r}, written by {written_by}; "
            f"this fastadapt ({__version__}) reads version {EXPORT_VERSION}: {hint}."
        )
    weights = _read_weights(folder, manifest)
    model = _assemble(manifest.get("config"), weights, folder, manifest.get("step"), written_by)
    described = manifest.get("preprocessing")
    stated = None if described is None else Preprocessing.from_json(described, manifest_path)
    if stated != model.preprocessing:
        raise CheckpointError(
            f"{manifest_path} states the preprocessing {stated} but its configuration implies "
            f"{model.preprocessing}; it was edited by hand. Export the run again."
        )
    return model


def _read_weights(folder: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has a {CONFIG_FILE} but no {WEIGHTS_FILE}; copy the whole export folder."
        )
    data = path.read_bytes()
    expected = (manifest.get("weights") or {}).get("sha256")
    if hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(
            f"{path} does not match the SHA-256 recorded in {CONFIG_FILE}: it is truncated or "
            "was replaced. Copy the export folder again."
        )
    try:
        return safetensors.torch.load(data)
    except safetensors.SafetensorError as error:
        raise CheckpointError(f"{path} is not a readable safetensors file: {error}.") from error


def _assemble(
    config_data: Any,
    weights: dict[str, torch.Tensor],
    source: Path,
    step: Any,
    writer: str,
) -> LoadedModel:
    """Rebuild the learner of ``config_data`` and load ``weights`` into it."""
    if not isinstance(config_data, dict) or not isinstance(step, int):
        raise CheckpointError(
            f"{source} lacks its configuration or step; it was not written by fastadapt. Use "
            "another checkpoint or export."
        )
    _require_known(config_data, source, writer)
    try:
        config = RunConfig.from_dict(config_data)
        learner = build_learner(config)
    except ConfigError as error:
        raise CheckpointError(
            f"{source}: its configuration does not fit this fastadapt ({__version__}): "
            f"{error} Load it with {writer}."
        ) from error
    try:
        learner.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(
            f"{source}: its weights do not fit the model its configuration describes "
            f"({error}); the files do not belong together."
        ) from error
    learner.eval()
    return LoadedModel(learner, config, Preprocessing.from_config(config), source, step)


def _require_known(config_data: dict[str, Any], source: Path, writer: str) -> None:
    """Refuse, by name, an algorithm, backbone or task family this version does not have."""
    sections = {
        "algorithm.name": (config_data.get("algorithm"), "name", ALGORITHMS),
        "model.kind": (config_data.get("model"), "kind", MODELS),
        "task.family": (config_data.get("task"), "family", TASK_FAMILIES),
    }
    for key, (section, field, registry) in sections.items():
        name = section.get(field) if isinstance(section, dict) else None
        if name not in registry:
            raise CheckpointError(
                f"{source} needs {key} {name!r}, which this fastadapt ({__version__}) does not "
                f"have (it has {', '.join(sorted(registry))}); load it with {writer}, or "
                "upgrade fastadapt."
            )
