"""Reproduction of the Omniglot tables of MAML, first-order MAML and Reptile.

Trains each setting from its preset (``fastadapt train``), evaluates its best checkpoint
(``fastadapt eval``) and prints ours beside the paper's number with the training wall time:

- MAML (Finn et al. 2017, Table 1), second order: ``maml-omniglot-{5,20}way-{1,5}shot``:
  98.7 / 99.9 / 95.8 / 98.9 (5w1s / 5w5s / 20w1s / 20w5s), scored after the test-time inner
  steps of the paper (3 for 5-way, 5 for 20-way).
- First-order MAML, the same presets with ``algorithm.first_order=true``: 98.3 / 99.2 / 89.4 /
  97.9.
- Reptile (Nichol et al. 2018, Table 1, transductive): ``reptile-omniglot-{5,20}way-{1,5}shot``:
  97.68 / 99.48 / 89.43 / 97.12.

The presets keep the papers' 60,000 meta-iterations, which takes far longer than 2 hours on a
2-core CPU; ``--set train.steps=N`` runs a shortened schedule (its figures go to
``..._custom.json``, never replacing full-length ones).

    python benchmarks/maml_omniglot_reproduction.py [--only maml-5way-1shot ...] [--reuse]
        [--runs-dir runs/reproduction] [--set train.steps=2000 ...]

Prints a markdown table and writes ``benchmarks/results/maml_omniglot_reproduction.json``.
"""

from __future__ import annotations

from _reproduction import Evaluation, Setting, main

#: The papers' numbers (percent), 5w1s / 5w5s / 20w1s / 20w5s.
MAML = {"5way-1shot": 98.7, "5way-5shot": 99.9, "20way-1shot": 95.8, "20way-5shot": 98.9}
FIRST_ORDER_MAML = {
    "5way-1shot": 98.3,
    "5way-5shot": 99.2,
    "20way-1shot": 89.4,
    "20way-5shot": 97.9,
}
REPTILE = {"5way-1shot": 97.68, "5way-5shot": 99.48, "20way-1shot": 89.43, "20way-5shot": 97.12}
#: The test-time inner steps at which the paper scores each setting.
TEST_STEPS = {"5way": 3, "20way": 5}


def _label(shape: str) -> str:
    ways, shots = shape.split("-")
    return f"{ways.removesuffix('way')}w{shots.removesuffix('shot')}s"


def _maml_setting(shape: str, paper: float, first_order: bool) -> Setting:
    ways = shape.split("-")[0]
    label = _label(shape)
    overrides = ("algorithm.first_order=true",) if first_order else ()
    metric = f"accuracy@{TEST_STEPS[ways]}"
    return Setting(
        f"maml-omniglot-{shape}", overrides, (Evaluation(label, (), paper, metric=metric),)
    )


SETTINGS: dict[str, Setting] = {
    **{f"maml-{shape}": _maml_setting(shape, paper, False) for shape, paper in MAML.items()},
    **{
        f"fomaml-{shape}": _maml_setting(shape, paper, True)
        for shape, paper in FIRST_ORDER_MAML.items()
    },
    **{
        f"reptile-{shape}": Setting(
            f"reptile-omniglot-{shape}", (), (Evaluation(_label(shape), (), paper),)
        )
        for shape, paper in REPTILE.items()
    },
}


if __name__ == "__main__":
    main(SETTINGS, "maml_omniglot_reproduction", __doc__.split("\n\n")[0])
