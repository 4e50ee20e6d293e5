"""Every shipped Omniglot preset trains and evaluates, and reports the metrics its paper cites."""

from __future__ import annotations

import pytest
from conftest import TINY_RUN

from fastadapt.config import list_presets, load_preset
from fastadapt.engine.run import train_run

OMNIGLOT_PRESETS = [name for name in list_presets() if load_preset(name).task.family == "omniglot"]


def test_the_image_presets_are_all_found() -> None:
    assert {"protonet-omniglot-1shot", "maml-omniglot-20way-5shot"} <= set(OMNIGLOT_PRESETS)
    assert any(name.startswith("reptile-") for name in OMNIGLOT_PRESETS)


@pytest.mark.parametrize("preset", OMNIGLOT_PRESETS)
def test_preset_trains_evaluates_and_reports_its_reference_metric(
    preset: str, fake_omniglot, tmp_path
) -> None:
    shrink = [*TINY_RUN, "train.steps=2", "train.meta_batch=2", "eval.tasks=3"]
    config = load_preset(preset).override(shrink)
    if config.algorithm.name in ("maml", "reptile"):
        shrink += ["eval.inner_steps=1", "eval.report_steps=[0, 1]"]
    record = train_run(load_preset(preset).override(shrink), tmp_path / "run", progress=False)
    reference = load_preset(preset).reference.values
    steps_named = {name.replace("@1", f"@{config.eval.inner_steps}") for name in record["metrics"]}
    assert set(reference) <= set(record["metrics"]) | steps_named
