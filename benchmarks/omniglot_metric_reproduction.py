"""Reproduction of the Omniglot tables of Prototypical Networks and Matching Networks.

Trains each setting from its preset (``fastadapt.engine.run.train_run``, exactly what
``fastadapt train`` runs), evaluates the best checkpoint under each test protocol
(``evaluate_run``, as ``fastadapt eval``), and prints ours beside the paper's number with the
training wall time and episodes. Settings:

- ProtoNet (Snell et al. 2017, Table 1): ``protonet-omniglot-1shot`` and ``-5shot``, each one
  model trained 60-way and evaluated 5-way and 20-way: 98.8 / 96.0 (1-shot), 99.7 / 98.9 (5-shot).
- Matching Networks (Vinyals et al. 2016, Table 1): ``matching-omniglot-1shot`` and ``-5shot``,
  trained on the test protocol's ways (5-way, and 20-way with ``task.ways=eval.ways=20``): 98.1 /
  93.8 (1-shot), 98.9 / 98.5 (5-shot).

Every evaluation is 1000 fixed test episodes of 15 queries per class (the presets' protocol),
reported as mean ± 95% CI, with the NLL and ECE of the predictions. Runs live in
``--runs-dir/<setting>``; with ``--reuse`` a setting whose run folder already holds a finished
training is evaluated without training again (its training time is read from the run's
``results.json``). Training a full setting takes hours on a 2-core CPU: run one setting at a
time with ``--only``. The machinery is shared with the other reproduction benchmarks
(``_reproduction.py``).

    python benchmarks/omniglot_metric_reproduction.py [--only protonet-1shot ...] [--reuse]
        [--runs-dir runs/reproduction] [--set train.steps=2000 ...] [--plots]

Prints a markdown table and writes ``benchmarks/results/omniglot_metric_reproduction.json``
(with ``--set`` overrides: ``..._custom.json``, so that shortened runs never replace the
full-length figures).
"""

from __future__ import annotations

from _reproduction import Evaluation, Setting, main

SETTINGS: dict[str, Setting] = {
    "protonet-1shot": Setting(
        "protonet-omniglot-1shot",
        (),
        (Evaluation("5w1s", (), 98.8), Evaluation("20w1s", ("eval.ways=20",), 96.0)),
    ),
    "protonet-5shot": Setting(
        "protonet-omniglot-5shot",
        (),
        (Evaluation("5w5s", (), 99.7), Evaluation("20w5s", ("eval.ways=20",), 98.9)),
    ),
    "matching-5way-1shot": Setting("matching-omniglot-1shot", (), (Evaluation("5w1s", (), 98.1),)),
    "matching-20way-1shot": Setting(
        "matching-omniglot-1shot",
        ("task.ways=20", "eval.ways=20"),
        (Evaluation("20w1s", (), 93.8),),
    ),
    "matching-5way-5shot": Setting("matching-omniglot-5shot", (), (Evaluation("5w5s", (), 98.9),)),
    "matching-20way-5shot": Setting(
        "matching-omniglot-5shot",
        ("task.ways=20", "eval.ways=20"),
        (Evaluation("20w5s", (), 98.5),),
    ),
}


if __name__ == "__main__":
    main(SETTINGS, "omniglot_metric_reproduction", __doc__.split("\n\n")[0])
