"""The non-meta baseline: one model trained on every example of the training tasks, optionally
fine-tuned on each new task's support set.

Finn, Abbeel & Levine 2017 (MAML, §5.1 and Figure 2) compare MAML with a network "pretrained on
all of the tasks" jointly and fine-tuned by gradient descent at test time. For cold-start
recommendation this is the global model trained on all ratings (the Wide & Deep comparison of
Lee et al. 2019, §4.1, shares MeLU's architecture), and the same model fine-tuned per user.

Training (:meth:`Pretrained.meta_loss`) minimises the ordinary loss of θ itself on the support
and query examples of each task, without an inner loop. Evaluation is MAML's: ``eval_inner_steps``
steps of gradient descent at ``eval_inner_lr`` on the support set (on the parameters chosen by
``anil`` or ``adapt``), with metrics after each of ``report_steps``; step 0 is the global model
without adaptation.
"""

from __future__ import annotations

import torch

from fastadapt.algorithms.base import LossOutput
from fastadapt.algorithms.maml import MAML
from fastadapt.tasks.task import TaskBatch


class Pretrained(MAML):
    """Joint training on all examples, fine-tuning at evaluation (takes MAML's arguments).

    ``inner_steps``, ``first_order``, ``meta_sgd`` and ``per_step_lr`` play no part: training
    has no inner loop. ``eval_inner_lr`` (default ``inner_lr``) and ``eval_inner_steps`` set the
    fine-tuning.
    """

    def meta_loss(self, batch: TaskBatch) -> LossOutput:
        """Mean over tasks of the loss of θ on the task's support and query examples together."""
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)
        mask = batch.query_mask
        if mask is not None:
            support = mask.new_ones(batch.support_x.shape[:2])
            mask = torch.cat([support, mask], dim=1)
        per_task = self.query_metrics(self._forward_tasks({}, x), y, mask)
        loss = per_task[self.loss_metric].mean()
        return LossOutput(loss, {k: v.detach().mean() for k, v in per_task.items()})
