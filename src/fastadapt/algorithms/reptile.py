"""Reptile: move the initialisation towards the weights that training on each task reaches.

Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms" (arXiv:1803.02999),
Algorithm 2 (batched version): for each task τ_i of a meta-batch of n, start from θ and take
k steps of SGD or Adam on the task's loss, reaching φ̃_i = U^k_τi(θ); then

    θ ← θ + ε · (1/n) Σ_i (φ̃_i − θ),

with the outer step size ε annealed linearly to 0 over training (§6, Appendix A). There is no
second-order term and no query loss in the update: the inner steps see all of a training task's
examples, in mini-batches of ``inner_batch`` (the paper trains Omniglot 5-way with 10 examples
per class, batches of 10 and k = 5).

**Fitting the common trainer.** :meth:`Reptile.meta_loss` returns the surrogate

    L(θ) = −(1/n) Σ_i ⟨sg(φ̃_i − θ), θ⟩         (sg: stop-gradient),

whose gradient is −(1/n) Σ_i (φ̃_i − θ), so one step of plain SGD with learning rate ε on it is
exactly the Reptile update; with Adam it is the "Reptile direction through Adam" variant the
authors mention. The trainer's ``train.lr_schedule="linear"`` gives the linear annealing of ε.
The surrogate's value is not a loss; the metrics reported beside it are the task loss and
accuracy on the last inner mini-batch.

**Inner optimiser.** SGD, or Adam with β1 = 0 (the paper's choice: no momentum, so each
step's direction is the current gradient scaled by the running RMS), β2 = 0.999, ε = 1e-8. With
``inner_state="per_task"`` every task starts Adam afresh, so its first step is lr · sign(g) in
every coordinate. With ``inner_state="persistent"`` the second moments v and the step count t
carry on from task to task, through the meta-batch and across outer steps, as in the authors'
code (``reptile.py`` of openai/supervised-reptile resets only the trainable variables between
tasks, so its Adam slots and β-power accumulators live on); evaluation starts each task from
that state and leaves it unchanged (the authors restore the full state after each evaluation
task). The state is a set of buffers, so checkpoints keep it; in a multi-process run each
process updates its own and the trainer averages them with the other buffers.

**Evaluation** (:meth:`adapt`): ``eval_inner_steps`` steps (50 in the paper) on the support set
in mini-batches of ``eval_inner_batch``, then the query set is predicted in one batch: with a
backbone whose BatchNorm uses batch statistics (as :class:`~fastadapt.nn.conv4.Conv4`), the
statistics are those of the whole query set, which is the paper's *transductive* setting.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from fastadapt.algorithms.base import (
    LossOutput,
    MetaLearner,
    Predictor,
    check_problem,
    task_loss,
)
from fastadapt.tasks.task import TaskBatch

INNER_OPTIMIZERS = ("sgd", "adam")
INNER_STATES = ("per_task", "persistent")
_ADAM_BETA2, _ADAM_EPS = 0.999, 1e-8


class Reptile(MetaLearner):
    """Reptile (Nichol et al. 2018) on any ``nn.Module``.

    Args:
        model: the network; its parameters are the initialisation θ.
        problem: ``"classification"`` or ``"regression"``.
        inner_steps: k, inner steps per training task.
        inner_lr: the inner optimiser's learning rate.
        inner_optimizer: ``"sgd"`` or ``"adam"`` (β1 = 0).
        inner_batch: examples per inner step (``None``: all of the task's examples each step).
        inner_state: ``"per_task"`` (a fresh Adam state for every task) or ``"persistent"``
            (Adam's second moments and step count carry on across training tasks, as in the
            authors' code; module docstring). Only with ``inner_optimizer="adam"``.
        eval_inner_steps, eval_inner_lr, eval_inner_batch: the same for evaluation
            (``None``: as in training).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        problem: str = "classification",
        inner_steps: int = 5,
        inner_lr: float = 1e-3,
        inner_optimizer: str = "adam",
        inner_batch: int | None = None,
        inner_state: str = "per_task",
        eval_inner_steps: int | None = None,
        eval_inner_lr: float | None = None,
        eval_inner_batch: int | None = None,
    ) -> None:
        super().__init__()
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(
                f"inner_optimizer must be one of {INNER_OPTIMIZERS}, got {inner_optimizer!r}."
            )
        if inner_state not in INNER_STATES:
            raise ValueError(f"inner_state must be one of {INNER_STATES}, got {inner_state!r}.")
        if inner_state == "persistent" and inner_optimizer != "adam":
            raise ValueError(
                "inner_state='persistent' carries Adam's second moments across tasks, but "
                f"inner_optimizer is {inner_optimizer!r}, which has none: use "
                "inner_optimizer='adam' or inner_state='per_task'."
            )
        for name, value in {
            "inner_steps": inner_steps,
            "inner_lr": inner_lr,
            "inner_batch": inner_batch,
            "eval_inner_steps": eval_inner_steps,
            "eval_inner_lr": eval_inner_lr,
            "eval_inner_batch": eval_inner_batch,
        }.items():
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}.")
        self.model = model
        self.problem = check_problem(problem)
        self.inner_optimizer = inner_optimizer
        self.train_schedule = (inner_steps, inner_lr, inner_batch)
        self.eval_schedule = (
            eval_inner_steps if eval_inner_steps is not None else inner_steps,
            eval_inner_lr if eval_inner_lr is not None else inner_lr,
            eval_inner_batch if eval_inner_batch is not None else inner_batch,
        )
        self.inner_state = inner_state
        self._moment_buffers: dict[str, str] = {}
        if inner_state == "persistent":
            for index, (name, p) in enumerate(model.named_parameters()):
                self._moment_buffers[name] = f"inner_second_moment_{index}"
                self.register_buffer(self._moment_buffers[name], torch.zeros_like(p.detach()))
            self.register_buffer("inner_adam_steps", torch.zeros((), dtype=torch.long))

    # -- the interface ----------------------------------------------------------------------

    def meta_loss(self, batch: TaskBatch) -> LossOutput:
        """The Reptile surrogate over the tasks of ``batch`` (module docstring)."""
        theta = dict(self.model.named_parameters())
        directions = {name: torch.zeros_like(p) for name, p in theta.items()}
        losses, accuracies = [], []
        for b in range(batch.num_tasks):
            x = torch.cat([batch.support_x[b], batch.query_x[b]])
            y = torch.cat([batch.support_y[b], batch.query_y[b]])
            adapted, loss, accuracy = self._train_on_task(
                x, y, self.train_schedule, keep_state=True
            )
            for name, p in adapted.items():
                directions[name] += p - theta[name].detach()
            losses.append(loss)
            if accuracy is not None:
                accuracies.append(accuracy)
        surrogate = -sum(
            (directions[name] / batch.num_tasks * p).sum() for name, p in theta.items()
        )
        metrics = {self.loss_metric: torch.stack(losses).mean()}
        if accuracies:
            metrics["accuracy"] = torch.stack(accuracies).mean()
        return LossOutput(surrogate, metrics)  # type: ignore[arg-type]

    def task_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task query metrics ``[B]`` after ``eval_inner_steps`` steps on each support set
        (:meth:`~fastadapt.algorithms.base.MetaLearner.evaluation_metrics`: ``mse``, or ``nll``,
        ``accuracy`` and calibration statistics)."""
        outputs = []
        for b in range(batch.num_tasks):
            predictor = self.adapt(batch.support_x[b], batch.support_y[b])
            outputs.append(predictor(batch.query_x[b]).detach())
        return self.evaluation_metrics(torch.stack(outputs), batch.query_y)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """Fine-tune a copy of θ on the support set; predict whole query sets in one batch."""
        with torch.enable_grad():
            adapted, _, _ = self._train_on_task(
                support_x, support_y, self.eval_schedule, keep_state=False
            )

        def forward(x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.model, adapted, (x,))

        return Predictor(forward, self.problem)

    # -- the inner loop ---------------------------------------------------------------------

    def _train_on_task(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        schedule: tuple[int, float, int | None],
        *,
        keep_state: bool,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """φ̃ = U^k(θ) on examples ``x``, ``y``; also the last step's loss and accuracy.

        With a persistent inner state, Adam starts from the stored one and, if ``keep_state``
        (training), stores where it ends."""
        steps, lr, batch_size = schedule
        batch_size = min(batch_size or len(x), len(x))
        fast = {n: p.detach().clone().requires_grad_() for n, p in self.model.named_parameters()}
        persistent = self.inner_state == "persistent"
        if persistent:
            second_moment = {n: self.get_buffer(b).clone() for n, b in self._moment_buffers.items()}
            steps_before = int(self.get_buffer("inner_adam_steps"))
        else:
            second_moment = {n: torch.zeros_like(p) for n, p in fast.items()}
            steps_before = 0
        order = torch.randperm(len(x), device=x.device)
        loss, accuracy = torch.zeros((), device=x.device), None
        for step in range(steps):
            # Mini-batches cycle through one shuffled pass over the task's examples.
            positions = torch.arange(step * batch_size, (step + 1) * batch_size) % len(x)
            index = order[positions.to(x.device)]
            output = functional_call(self.model, fast, (x[index],))
            loss = task_loss(self.problem, output, y[index])
            grads = torch.autograd.grad(loss, list(fast.values()))
            with torch.no_grad():
                for (name, p), g in zip(fast.items(), grads, strict=True):
                    if self.inner_optimizer == "adam":
                        v = second_moment[name].mul_(_ADAM_BETA2)
                        v.addcmul_(g, g, value=1 - _ADAM_BETA2)
                        v_hat = v / (1 - _ADAM_BETA2 ** (steps_before + step + 1))
                        p.sub_(lr * g / (v_hat.sqrt() + _ADAM_EPS))
                    else:
                        p.sub_(lr * g)
            if self.problem == "classification":
                accuracy = (output.argmax(dim=-1) == y[index]).float().mean().detach()
        if persistent and keep_state:
            for name, buffer in self._moment_buffers.items():
                self.get_buffer(buffer).copy_(second_moment[name])
            self.get_buffer("inner_adam_steps").add_(steps)
        adapted = {name: p.detach() for name, p in fast.items()}
        return adapted, loss.detach(), accuracy
