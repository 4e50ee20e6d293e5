"""Calibration of classifiers: the expected calibration error (ECE) and its confidence interval.

Guo, Pleiss, Sun & Weinberger 2017, "On Calibration of Modern Neural Networks" (ICML), §2.
Each prediction has a confidence, its largest class probability, and is right or wrong. The
predictions are grouped by confidence into M = 15 equal-width bins
``B_m = ((m - 1)/M, m/M]`` and

    ECE = Σ_m (|B_m| / n) · |acc(B_m) − conf(B_m)|,

the gap between accuracy and mean confidence in each bin, weighted by the bin's share of the
n predictions. A perfectly calibrated classifier has ECE 0.

**Pooled over tasks.** ECE is a statistic of all the test predictions together, not a mean
of per-task values: a few-shot test task often has only 5 queries (VERSA's protocol: as many
queries as shots), and an ECE of 5 predictions is dominated by its own binning noise and
biased upwards. Each task therefore contributes its counts per bin, ``[bins, 3]`` = (number
of predictions, sum of confidences, number right); the evaluator sums them over all tasks
and computes one ECE.

**Confidence interval.** The tasks are the independent units, so the interval comes from a
bootstrap over tasks: :data:`BOOTSTRAP_REPLICATES` resamples of the test tasks with
replacement (a fixed seed, so an evaluation is reproducible), the pooled ECE of each, and
±1.96 times their standard deviation, the same ``± 1.96 · standard error`` form as every
other metric (:func:`fastadapt.engine.evaluate.mean_ci95`).
"""

from __future__ import annotations

import torch

ECE_BINS = 15
"""Confidence bins of the ECE (Guo et al. 2017 use 15)."""
CALIBRATION = "calibration"
"""Name of the per-task calibration counts in ``task_metrics`` (``calibration@k`` for MAML's
report steps); the evaluator reports them as ``ece`` (``ece@k``)."""
BOOTSTRAP_REPLICATES = 1000
BOOTSTRAP_SEED = 0
_COUNT, _CONFIDENCE, _CORRECT = 0, 1, 2


def calibration_counts(
    probabilities: torch.Tensor, target: torch.Tensor, bins: int = ECE_BINS
) -> torch.Tensor:
    """Per-task counts per confidence bin, ``[B, bins, 3]``: predictions, sum of
    confidences, predictions right.

    Args:
        probabilities: class probabilities ``[B, m, ways]`` of the queries of ``B`` tasks.
        target: the true labels ``[B, m]``.
        bins: number of equal-width confidence bins.
    """
    confidence, predicted = probabilities.detach().max(dim=-1)  # [B, m]
    # Bin m holds confidences in ((m - 1)/M, m/M]; a confidence of 0 joins the first bin.
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    one_hot = torch.nn.functional.one_hot(index, bins).to(confidence.dtype)  # [B, m, bins]
    right = (predicted == target).to(confidence.dtype)
    per_prediction = torch.stack([torch.ones_like(confidence), confidence, right], dim=-1)
    return torch.bmm(one_hot.transpose(1, 2), per_prediction)  # [B, bins, 3]


def expected_calibration_error(counts: torch.Tensor) -> torch.Tensor:
    """The ECE of pooled counts ``[..., bins, 3]`` (see :func:`calibration_counts`): ``[...]``."""
    total = counts[..., _COUNT].sum(dim=-1)
    gaps = (counts[..., _CORRECT] - counts[..., _CONFIDENCE]).abs().sum(dim=-1)
    return gaps / total.clamp_min(1)


def bootstrap_ece(
    per_task: torch.Tensor,
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = BOOTSTRAP_SEED,
) -> torch.Tensor:
    """Pooled ECE of ``replicates`` resamples (with replacement) of the tasks: ``[replicates]``.

    ``per_task`` is ``[T, bins, 3]``. A resample is a vector of multiplicities ``[T]``, so
    its pooled counts are one matrix product, and all replicates cost one ``[R, T] x [T, 3M]``
    product.
    """
    tasks = per_task.shape[0]
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(tasks, (replicates, tasks), generator=generator)
    multiplicity = torch.zeros(replicates, tasks, dtype=per_task.dtype)
    multiplicity.scatter_add_(1, draws, torch.ones_like(multiplicity))
    pooled = (multiplicity @ per_task.flatten(1)).reshape(replicates, *per_task.shape[1:])
    return expected_calibration_error(pooled)


def ece_name(name: str) -> str | None:
    """``"ece"`` for ``"calibration"``, ``"ece@5"`` for ``"calibration@5"``; else ``None``."""
    base, at, suffix = name.partition("@")
    return f"ece{at}{suffix}" if base == CALIBRATION else None
