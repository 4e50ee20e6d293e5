"""MAML and its variants (first-order MAML, ANIL, Meta-SGD, MAML++ per-step learning rates).

Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks" (arXiv:1703.03400). The inner loop (Eq. 1) adapts the parameters of each task by
gradient descent on its support loss,

    θ'_i = θ - α ∇_θ L_{T_i}(f_θ),

and the meta-objective (Eq. 2-3) is the query loss of the adapted parameters,
``min_θ Σ_i L_{T_i}(f_{θ'_i})``, differentiated through the inner loop (second order) or with
the inner gradients treated as constants (first order, §5.2).

Options:
- ``anil`` (Raghu et al. 2020, "Rapid Learning or Feature Reuse?"): only the head's parameters
  are adapted in the inner loop.
- ``adapt``: only the parameters of the named modules are adapted, the others are learned by
  the outer loop alone. MeLU (Lee et al. 2019, "MeLU: Meta-Learned User Preference Estimator
  for Cold-Start Recommendation", §3.2 and Algorithm 1) is MAML with ``adapt`` naming the
  decision-making and output layers: the "local update" of θ2 on a user's support ratings,
  while the user and item embeddings θ1 change only in the "global update".
- ``meta_sgd`` (Li et al. 2017, "Meta-SGD", Eq. 4): θ'_i = θ - α ∘ ∇L with a learned
  learning rate per parameter element.
- ``per_step_lr`` (Antoniou et al. 2019, "How to train your MAML", §4 LSLR): a learned learning
  rate per parameter tensor and per inner step.

The model is a plain ``nn.Module`` applied with ``torch.func.functional_call``; tasks are
batched by :mod:`fastadapt.nn.batching`. BatchNorm layers should use batch statistics
(``track_running_stats=False``), as in MAML.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

from fastadapt.algorithms.base import LossOutput, MetaLearner, Predictor, check_problem
from fastadapt.nn.batching import call_over_tasks, expand_to_tasks, resolve_batch_mode
from fastadapt.tasks.task import TaskBatch


class MAML(MetaLearner):
    """Gradient-based meta-learner: learn an initialisation that adapts in a few SGD steps.

    Args:
        model: any ``nn.Module`` mapping a task's inputs ``[n, ...]`` to outputs ``[n, ...]``.
        problem: ``"regression"`` (mean squared error) or ``"classification"`` (cross-entropy).
        inner_steps: inner-loop steps during meta-training.
        inner_lr: inner-loop step size α during meta-training.
        eval_inner_steps: inner-loop steps at evaluation and in :meth:`adapt` (default:
            ``inner_steps``).
        eval_inner_lr: the step size at evaluation and in :meth:`adapt` (default:
            ``inner_lr``).
        report_steps: step counts after which :meth:`task_metrics` reports metrics
            (default: ``[eval_inner_steps]``); 0 reports the unadapted model.
        first_order: drop second-order terms (first-order MAML).
        anil: adapt only the parameters of ``head`` (default: the model's last child that has
            parameters).
        adapt: adapt only the parameters of these modules (dotted names such as
            ``"decision"`` or ``"decision.4"``, or parameter names); default: every parameter.
            Cannot be combined with ``anil``, which is ``adapt=[head]``.
        meta_sgd: learn one inner learning rate per parameter element, initialised to α.
        per_step_lr: learn one inner learning rate per parameter tensor and inner step;
            evaluation steps beyond ``inner_steps`` reuse the last step's rates.
        batch_mode: ``"vmap"``, ``"loop"`` or ``"auto"`` (see :mod:`fastadapt.nn.batching`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        problem: str = "regression",
        inner_steps: int = 1,
        inner_lr: float = 0.01,
        eval_inner_steps: int | None = None,
        eval_inner_lr: float | None = None,
        report_steps: Sequence[int] | None = None,
        first_order: bool = False,
        anil: bool = False,
        head: str | None = None,
        adapt: Sequence[str] | None = None,
        meta_sgd: bool = False,
        per_step_lr: bool = False,
        batch_mode: str = "auto",
    ) -> None:
        super().__init__()
        _refuse_running_statistics(model)
        self.model = model
        self.problem = check_problem(problem)
        self.inner_steps = _positive_int("inner_steps", inner_steps)
        self.eval_inner_steps = _positive_int(
            "eval_inner_steps", inner_steps if eval_inner_steps is None else eval_inner_steps
        )
        self.inner_lr = _positive_float("inner_lr", inner_lr)
        learned_lr = meta_sgd or per_step_lr
        if learned_lr and eval_inner_lr is not None:
            raise ValueError(
                "eval_inner_lr cannot be set with meta_sgd or per_step_lr: the learned inner "
                "learning rates are used at evaluation too; remove eval_inner_lr."
            )
        self.eval_inner_lr = _positive_float(
            "eval_inner_lr", inner_lr if eval_inner_lr is None else eval_inner_lr
        )
        self.report_steps = sorted(set(report_steps or [self.eval_inner_steps]))
        if self.report_steps[0] < 0:
            raise ValueError(f"report_steps must be >= 0, got {list(report_steps or [])}.")
        self.first_order = first_order
        self.per_step_lr = per_step_lr
        resolve_batch_mode(model, batch_mode)  # refuses an unknown mode here, not mid-training
        self.batch_mode = batch_mode
        self.adapted_names = _adapted_parameter_names(model, anil, head, adapt)
        self.inner_lrs: nn.ParameterList | None = None
        if learned_lr:
            shapes = dict(model.named_parameters())
            self.inner_lrs = nn.ParameterList(
                nn.Parameter(torch.full(self._lr_shape(shapes[name].shape, meta_sgd), inner_lr))
                for name in self.adapted_names
            )

    def _lr_shape(self, param_shape: torch.Size, meta_sgd: bool) -> tuple[int, ...]:
        steps = (self.inner_steps,) if self.per_step_lr else ()
        return steps + (tuple(param_shape) if meta_sgd else ())

    def meta_loss(self, batch: TaskBatch) -> LossOutput:
        """Mean query loss after ``inner_steps`` adaptation steps (MAML Eq. 3)."""
        *_, params = self._inner_loop(
            batch.support_x, batch.support_y, self.inner_steps, training=True
        )
        per_task = self.query_metrics(
            self._forward_tasks(params, batch.query_x), batch.query_y, batch.query_mask
        )
        loss = per_task[self.loss_metric].mean()
        return LossOutput(loss, {k: v.detach().mean() for k, v in per_task.items()})

    def task_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Query metrics after each of ``report_steps`` evaluation steps, keyed ``name@steps``
        (:meth:`~fastadapt.algorithms.base.MetaLearner.evaluation_metrics`: ``mse``, or ``nll``,
        ``accuracy`` and calibration statistics).

        The metrics after ``eval_inner_steps`` steps are also given under their plain names.
        """
        last = max(self.report_steps[-1], self.eval_inner_steps)
        metrics: dict[str, torch.Tensor] = {}
        steps = self._inner_loop(batch.support_x, batch.support_y, last, training=False)
        for step, params in enumerate(steps):
            if step not in self.report_steps and step != self.eval_inner_steps:
                continue
            with torch.no_grad():
                per_task = self.evaluation_metrics(
                    self._forward_tasks(params, batch.query_x), batch.query_y, batch.query_mask
                )
            for name, value in per_task.items():
                if step in self.report_steps:
                    metrics[f"{name}@{step}"] = value
                if step == self.eval_inner_steps:
                    metrics[name] = value
        return metrics

    def explain_non_finite(self, batch: TaskBatch) -> str | None:
        """The first task of ``batch`` whose training inner loop gives non-finite parameters,
        and after which inner step (0: the meta-parameters θ themselves), or else whose query
        loss is non-finite with finite adapted parameters."""
        steps = self._inner_loop(batch.support_x, batch.support_y, self.inner_steps, training=True)
        for step, params in enumerate(steps):
            sums = torch.stack([p.detach().flatten(1).sum(dim=1) for p in params.values()])
            bad = _non_finite_tasks(sums.sum(dim=0))
            if step == 0 and bad:
                return f"the meta-parameters θ are non-finite ({bad})"
            if bad:
                return (
                    f"{bad} has non-finite adapted parameters after inner step {step} of "
                    f"{self.inner_steps}; lower algorithm.inner_lr or algorithm.inner_steps"
                )
        with torch.no_grad():
            outputs = self._forward_tasks(params, batch.query_x)
            losses = self.query_metrics(outputs, batch.query_y, batch.query_mask)
        bad = _non_finite_tasks(losses[self.loss_metric])
        if bad:
            return (
                f"{bad} has finite adapted parameters after {self.inner_steps} inner step(s) but "
                "a non-finite query loss; lower algorithm.inner_lr"
            )
        return None

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """Adapt to one task with ``eval_inner_steps`` steps; the predictor holds ``θ'``."""
        *_, params = self._inner_loop(
            support_x.unsqueeze(0), support_y.unsqueeze(0), self.eval_inner_steps, training=False
        )
        adapted = {name: p[0].detach() for name, p in params.items()}
        return Predictor(lambda x: functional_call(self.model, adapted, (x,)), self.problem)

    def _forward_tasks(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        mode = resolve_batch_mode(self.model, self.batch_mode, x)
        return call_over_tasks(self.model, params, x, mode=mode)

    def _inner_loop(
        self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int, *, training: bool
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the per-task parameters ``[B, ...]`` before and after each inner step (Eq. 1).

        ``training=True`` keeps the graph back to θ (and, unless first order, through the inner
        gradients); ``training=False`` detaches every step, for evaluation. Parameters that do
        not require grad (frozen, or θ given under ``torch.no_grad``) are adapted all the same.
        """
        shared = dict(self.model.named_parameters())
        theta = {name: shared[name] for name in self.adapted_names}
        if not training:
            theta = {name: p.detach() for name, p in theta.items()}
        params = expand_to_tasks(theta, support_x.shape[0])
        yield params
        create_graph = training and not self.first_order
        for step in range(steps):
            with torch.enable_grad():
                params = {
                    name: p if training and p.requires_grad else p.detach().requires_grad_()
                    for name, p in params.items()
                }
                loss = self.task_losses(self._forward_tasks(params, support_x), support_y).sum()
                tensors = list(params.values())
                grads = torch.autograd.grad(loss, tensors, create_graph=create_graph)
                params = dict(zip(params, self._gradient_step(tensors, grads, step, training)))
            yield params

    def _gradient_step(
        self,
        tensors: list[torch.Tensor],
        grads: tuple[torch.Tensor, ...],
        step: int,
        training: bool,
    ) -> list[torch.Tensor]:
        """``θ - α ∇L`` for every adapted tensor (Eq. 1; Meta-SGD's ``α ∘ ∇L`` when learned)."""
        if self.inner_lrs is None:
            lr = self.inner_lr if training else self.eval_inner_lr
            return list(torch._foreach_add(tensors, grads, alpha=-lr))
        updated = []
        for p, g, lr in zip(tensors, grads, self.inner_lrs):
            if self.per_step_lr:
                lr = lr[min(step, lr.shape[0] - 1)]
            updated.append(p - (lr if training else lr.detach()) * g)
        return updated


def _adapted_parameter_names(
    model: nn.Module, anil: bool, head: str | None, adapt: Sequence[str] | None
) -> list[str]:
    """The names of the parameters the inner loop adapts, in the model's order."""
    names = [name for name, _ in model.named_parameters()]
    if not names:
        raise ValueError("the model has no parameters to adapt; pass a model with parameters.")
    children = [n for n, _ in model.named_children()]
    if anil:
        if adapt is not None:
            raise ValueError("anil=True adapts the head only; pass anil or adapt, not both.")
        if head is None:
            with_params = [
                n for n, m in model.named_children() if any(True for _ in m.parameters())
            ]
            if not with_params:
                raise ValueError("anil=True needs a model with child modules; name the head.")
            head = with_params[-1]
        if not any(_belongs(name, head) for name in names):
            raise ValueError(
                f"anil head {head!r} matches no parameter of the model; "
                f"choose one of its child modules: {children}."
            )
        adapt = [head]
    if adapt is None:
        return names
    if isinstance(adapt, str) or not adapt:
        raise ValueError(f"adapt must be a list of module names, e.g. ['decision'], got {adapt!r}.")
    unknown = [prefix for prefix in adapt if not any(_belongs(n, prefix) for n in names)]
    if unknown:
        raise ValueError(
            f"adapt names {unknown}, which match no parameter of the model; choose among its "
            f"modules, e.g. its children {children}."
        )
    return [name for name in names if any(_belongs(name, prefix) for prefix in adapt)]


def _non_finite_tasks(per_task: torch.Tensor) -> str:
    """``"task i of the meta-batch (k of B)"`` for the first non-finite value of ``per_task``
    ``[B]`` (``k`` of them), or ``""`` when all are finite."""
    bad = (~torch.isfinite(per_task)).nonzero()
    if not len(bad):
        return ""
    return f"task {int(bad[0])} of the meta-batch ({len(bad)} of {per_task.shape[0]})"


def _belongs(name: str, prefix: str) -> bool:
    """Whether parameter ``name`` is ``prefix`` or lies inside the module ``prefix``."""
    return name == prefix or name.startswith(prefix + ".")


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def _positive_float(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    return float(value)


def _refuse_running_statistics(model: nn.Module) -> None:
    """MAML needs BatchNorm with batch statistics: refuse layers that track running ones.

    In the inner loop a normalisation layer that tracks running statistics is updated (a side
    effect, in place) by every task's support and query forward passes, adapted or not, so the
    statistics an evaluation uses depend on which tasks were seen last, and in ``eval()`` mode
    the adapted model would normalise its support set with statistics of other tasks.
    """
    tracking = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats
    ]
    if tracking:
        raise ValueError(
            f"MAML needs BatchNorm with batch statistics, but {', '.join(tracking[:3])} "
            "track running statistics: the inner loop would update them as a side effect of "
            "every task, so evaluation would depend on the tasks seen last. Build these layers "
            "with track_running_stats=False (fastadapt's Conv4 does; for ResNet12 pass "
            "track_running_stats=False)."
        )
