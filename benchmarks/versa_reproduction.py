"""Reproduction of VERSA's Omniglot table (Gordon et al. 2019, Table 1), and VERSA on sinusoids.

Trains each preset (``fastadapt train``), evaluates its best checkpoint (``fastadapt eval``) and
prints ours beside the paper's number, with the NLL and ECE of the predictions and the training
wall time:

- ``omniglot-{5,20}way-{1,5}shot``: ``versa-omniglot-*``, VERSA's protocol (random 1100 / 100 /
  423 character split with rotations as classes, 600 test tasks with as many queries per class
  as shots): 99.70 ± 0.20 / 99.75 ± 0.13 / 97.66 ± 0.29 / 98.77 ± 0.18 (5w1s / 5w5s / 20w1s /
  20w5s). Each preset is sized to train in under 2 hours on a 2-core CPU (the 20-way 1-shot
  one, 32,000 steps, and the 5-way ones, 44,000 and 36,000 steps of 20-way tasks, in
  bfloat16: ``--set train.precision=bfloat16``). The models trained on 20-way tasks are also
  evaluated at the other way with their shots, as Snell et al. test one Prototypical Network
  at both ways.
- ``sinusoid``: ``sinusoid-versa`` (K=5, 600 tasks); VERSA reports no sinusoid number, so the
  "paper" column is MAML's mean squared error after 10 steps (Finn et al. 2017, Figure 2).
  ``--plots`` draws its predictions with ± 2σ on four test tasks (``predictions.png``).
- ``miniimagenet-{1,5}shot`` (only with ``--only``: they need your copy of mini-ImageNet, and
  the paper's GPU-sized schedules): 53.40 ± 1.82 / 67.37 ± 0.86.

    python benchmarks/versa_reproduction.py [--only omniglot-5way-1shot ...] [--reuse]
        [--runs-dir runs/reproduction] [--set train.steps=100 ...] [--plots]

Prints a markdown table and writes ``benchmarks/results/versa_reproduction.json``
(``versa_reproduction_custom.json`` with ``--set``).
"""

from __future__ import annotations

from _reproduction import Evaluation, Setting, main

SETTINGS: dict[str, Setting] = {
    "omniglot-5way-1shot": Setting(
        "versa-omniglot-5way-1shot",
        (),
        (
            Evaluation("5w1s", (), 99.70, 0.20),
            Evaluation("20w1s", ("eval.ways=20",), 97.66, 0.29),
        ),
    ),
    "omniglot-5way-5shot": Setting(
        "versa-omniglot-5way-5shot",
        (),
        (
            Evaluation("5w5s", (), 99.75, 0.13),
            Evaluation("20w5s", ("eval.ways=20",), 98.77, 0.18),
        ),
    ),
    "omniglot-20way-1shot": Setting(
        "versa-omniglot-20way-1shot",
        (),
        (
            Evaluation("20w1s", (), 97.66, 0.29),
            Evaluation("5w1s", ("eval.ways=5",), 99.70, 0.20),
        ),
    ),
    "omniglot-20way-5shot": Setting(
        "versa-omniglot-20way-5shot",
        (),
        (
            Evaluation("20w5s", (), 98.77, 0.18),
            Evaluation("5w5s", ("eval.ways=5",), 99.75, 0.13),
        ),
    ),
    "sinusoid": Setting(
        "sinusoid-versa", (), (Evaluation("K=5 (paper: MAML, 10 steps)", (), 0.35, metric="mse"),)
    ),
    "miniimagenet-1shot": Setting(
        "versa-miniimagenet-1shot", (), (Evaluation("5w1s", (), 53.40, 1.82),), default=False
    ),
    "miniimagenet-5shot": Setting(
        "versa-miniimagenet-5shot", (), (Evaluation("5w5s", (), 67.37, 0.86),), default=False
    ),
}


if __name__ == "__main__":
    main(SETTINGS, "versa_reproduction", __doc__.split("\n\n")[0])
