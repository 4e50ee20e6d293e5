"""Matching Networks, with optional full context embeddings (FCE).

Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016, "Matching Networks for One Shot
Learning" (arXiv:1606.04080). A query x̂ is classified by attending over the labelled support
set S = {(x_i, y_i)} (§2.1, Eq. 1-2):

    ŷ = Σ_i a(x̂, x_i) y_i,        a(x̂, x_i) = softmax_i c(f(x̂), g(x_i)),

where c is the cosine similarity and y_i is one-hot. With ``similarity="support_cosine"``, c is
instead the dot product of the query's embedding with the *unit-normalised* support embedding,
c(f, g) = fᵀg / |g|: the same ranking of the support examples as the cosine (it is the cosine
times |f|, which does not depend on i), but the query's norm |f| becomes a learned inverse
temperature of the softmax. With the plain cosine, c ∈ [-1, 1] (and ∈ [0, 1] after a ReLU
embedding such as Conv-4), so a(x̂, x_i) can never be confident: the loss stays near its
uniform value and training stalls (Omniglot 5-way 1-shot, Conv-4, 300 meta-batches of 8
tasks: 78.6% with the cosine, 95.1% with ``"support_cosine"``). The logits this module returns
are log ŷ, computed stably as ``logsumexp_{i: y_i = k} c_i - logsumexp_i c_i`` rather than
log of a sum of probabilities, so the base class's cross-entropy is exactly -log ŷ_{true class}.

Without FCE, f = g = the embedding network. With FCE (Appendix A.2), both see the whole
support set:

- g(x_i, S) = h⃗_i + h⃖_i + g'(x_i): a bidirectional LSTM over the support embeddings g'(x_i)
  (in the order the support set is given), with a skip connection.
- f(x̂, S) = attLSTM(f'(x̂), g(S), K): K "read" steps of an LSTM whose recurrent input is the
  previous state and a read-out of the support set,

      ĥ_k, c_k = LSTM(f'(x̂), [h_{k-1}, r_{k-1}], c_{k-1}),     h_k = ĥ_k + f'(x̂),
      r_{k-1} = Σ_i softmax_i(h_{k-1}ᵀ g(x_i)) g(x_i),           f(x̂, S) = h_K.

  An LSTM whose recurrent input is the concatenation [h, r] computes gates
  W_x f' + W_h h + W_r r + b; this is the same as an ``nn.LSTMCell`` over the input
  [f'(x̂), r_{k-1}] with state (h_{k-1}, c_{k-1}), which is how it is implemented. The
  initial state is h_0 = f'(x̂) (i.e. ĥ_0 = 0 plus the skip connection) and c_0 = 0.

f' and g' are the same embedding network, as in the paper. Every image of every task of a
batch (support and query) goes through the embedding in one call, the bidirectional LSTM runs
over all support sets at once, and the attention LSTM over all queries of all tasks at once:
there is no Python loop over tasks or queries, only over the K read steps. Note that an
embedding with batch-statistics BatchNorm (e.g. :class:`~fastadapt.nn.conv4.Conv4`) then
normalises with statistics of the whole batch, support and query images together.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms.base import LossOutput, MetaLearner, Predictor
from fastadapt.nn.precision import float32_region
from fastadapt.tasks.task import TaskBatch

Similarity = Literal["cosine", "support_cosine"]
SIMILARITIES = ("cosine", "support_cosine")


class MatchingNet(MetaLearner):
    """Matching Networks: soft nearest neighbour over the support set in an embedding space.

    Args:
        embedding: an ``nn.Module`` mapping images ``[n, C, H, W]`` to embeddings ``[n, D]``
            (any further output dimensions are flattened).
        embedding_dim: D, the embedding size; required with ``fce=True`` (it sizes the LSTMs),
            checked against the embedding's output when given.
        fce: use full context embeddings (Appendix A.2): a bidirectional LSTM for g and an
            attention LSTM with ``read_steps`` steps for f.
        read_steps: K, the attention LSTM's number of read steps (``fce=True`` only). The
            paper leaves K open; the default ``None`` uses one read per support example
            (K = ways x shots of the task at hand), so that the reader can, in principle, visit
            every support example once, and K follows the support set when ways/shots change
            at test time. Pass a fixed integer to make the cost independent of the support size.
        similarity: c of Eq. 2: ``"cosine"`` (the paper's equation as written) or
            ``"support_cosine"`` (only the support embeddings normalised, so that the query's
            norm sets the softmax temperature; see the module docstring).
    """

    def __init__(
        self,
        embedding: nn.Module,
        *,
        embedding_dim: int | None = None,
        fce: bool = False,
        read_steps: int | None = None,
        similarity: Similarity = "cosine",
    ) -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(
                f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}."
            )
        if not isinstance(embedding, nn.Module):
            raise ValueError(
                f"embedding must be an nn.Module mapping images to vectors, "
                f"got {type(embedding).__name__}."
            )
        if embedding_dim is not None:
            embedding_dim = _positive_int("embedding_dim", embedding_dim)
        if read_steps is not None:
            read_steps = _positive_int("read_steps", read_steps)
        if fce and embedding_dim is None:
            raise ValueError(
                "fce=True needs embedding_dim, the size D of the embedding's output, to size the "
                "LSTMs of the full context embeddings; pass embedding_dim=D."
            )
        if not fce and read_steps is not None:
            raise ValueError(
                "read_steps is the number of attention-LSTM reads of full context embeddings; "
                "it has no effect without fce=True: pass fce=True or remove read_steps."
            )
        self.problem = "classification"
        self.embedding = embedding
        self.embedding_dim = embedding_dim
        self.fce = bool(fce)
        self.read_steps = read_steps
        self.similarity = similarity
        self.support_lstm: nn.LSTM | None = None
        self.query_lstm: nn.LSTMCell | None = None
        if self.fce:
            assert embedding_dim is not None
            dim = embedding_dim
            self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
            self.query_lstm = nn.LSTMCell(2 * dim, dim)

    # ------------------------------------------------------------------ the model
    def _embed(
        self, support_x: torch.Tensor, query_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``[B, S, D]`` and ``[B, Q, D]`` of all images of all tasks, in one call."""
        b, s, q = support_x.shape[0], support_x.shape[1], query_x.shape[1]
        images = torch.cat([support_x.flatten(0, 1), query_x.flatten(0, 1)])
        z = self.embedding(images).flatten(1)
        if self.embedding_dim is not None and z.shape[1] != self.embedding_dim:
            raise ValueError(
                f"the embedding returned {z.shape[1]} features per image but embedding_dim is "
                f"{self.embedding_dim}; pass embedding_dim={z.shape[1]}."
            )
        return z[: b * s].reshape(b, s, -1), z[b * s :].reshape(b, q, -1)

    def _context_support(self, g0: torch.Tensor) -> torch.Tensor:
        """g(x_i, S) = h⃗_i + h⃖_i + g'(x_i): bidirectional LSTM over each support set."""
        assert self.support_lstm is not None
        out, _ = self.support_lstm(g0)
        forward, backward = out.chunk(2, dim=-1)
        return forward + backward + g0

    def _context_query(self, f0: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """f(x̂, S) = attLSTM(f'(x̂), g(S), K), batched over all queries of all tasks."""
        assert self.query_lstm is not None
        b, q, d = f0.shape
        steps = self.read_steps if self.read_steps is not None else g.shape[1]
        flat_f0 = f0.reshape(b * q, d)
        h, c = flat_f0, torch.zeros_like(flat_f0)
        for _ in range(steps):
            attention = torch.bmm(h.reshape(b, q, d), g.transpose(1, 2)).softmax(dim=-1)
            read = torch.bmm(attention, g).reshape(b * q, d)
            h_hat, c = self.query_lstm(torch.cat([flat_f0, read], dim=-1), (h, c))
            h = h_hat + flat_f0
        return h.reshape(b, q, d)

    def _logits(
        self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor
    ) -> torch.Tensor:
        """log ŷ ``[B, Q, ways]`` for batched tasks (Eq. 1-2)."""
        _check_inputs(support_x, support_y, query_x)
        return self._attend(*self._embed(support_x, query_x), support_y)

    @float32_region
    def _attend(self, g: torch.Tensor, f: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """log ŷ ``[B, Q, ways]`` from support and query embeddings ``[B, S, D]`` and
        ``[B, Q, D]``: full context embeddings (if ``fce``), then the attention (Eq. 1-2)."""
        if self.fce:
            g = self._context_support(g)
            f = self._context_query(f, g)
        query = F.normalize(f, dim=-1) if self.similarity == "cosine" else f
        cosine = torch.bmm(query, F.normalize(g, dim=-1).transpose(1, 2))
        ways = int(support_y.max()) + 1
        in_class = F.one_hot(support_y, ways).to(torch.bool)  # [B, S, ways]
        # A very negative (finite) score keeps a class with no support example at ŷ ≈ 0
        # without producing NaN gradients in logsumexp.
        masked = cosine.unsqueeze(-1).masked_fill(
            ~in_class.unsqueeze(1), torch.finfo(cosine.dtype).min
        )  # [B, Q, S, ways]
        return masked.logsumexp(dim=2) - cosine.logsumexp(dim=-1, keepdim=True)

    # ------------------------------------------------------------------ the interface
    def meta_loss(self, batch: TaskBatch) -> LossOutput:
        """Mean query cross-entropy -log ŷ_y over the tasks of ``batch``."""
        logits = self._logits(batch.support_x, batch.support_y, batch.query_x)
        per_task = self.query_metrics(logits, batch.query_y)
        loss = per_task[self.loss_metric].mean()
        return LossOutput(loss, {k: v.detach().mean() for k, v in per_task.items()})

    def task_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task query ``nll``, ``accuracy`` and calibration statistics, each ``[B, ...]``."""
        with torch.no_grad():
            logits = self._logits(batch.support_x, batch.support_y, batch.query_x)
            return self.evaluation_metrics(logits, batch.query_y)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """A predictor of log ŷ ``[n, ways]`` for new inputs ``[n, C, H, W]`` of this task."""
        if support_y.dim() != 1:
            raise ValueError(
                "adapt() takes one task's support set without a task dimension: support_y "
                f"must be [n], got shape {tuple(support_y.shape)}."
            )
        support_x, support_y = support_x.detach(), support_y.detach()
        _check_inputs(support_x.unsqueeze(0), support_y.unsqueeze(0), support_x.unsqueeze(0))

        def forward(x: torch.Tensor) -> torch.Tensor:
            return self._logits(support_x.unsqueeze(0), support_y.unsqueeze(0), x.unsqueeze(0))[0]

        return Predictor(forward, self.problem)


def _check_inputs(support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> None:
    if support_y.dim() != 2 or support_x.shape[:2] != support_y.shape:
        raise ValueError(
            "support_y must be [B, S] integer labels matching support_x [B, S, ...], got "
            f"support_x {tuple(support_x.shape)} and support_y {tuple(support_y.shape)}."
        )
    if support_y.dtype.is_floating_point or support_y.dtype == torch.bool:
        raise ValueError(
            f"MatchingNet classifies: support_y must hold integer class labels 0..ways-1, "
            f"got dtype {support_y.dtype}."
        )
    if support_y.shape[1] == 0:
        raise ValueError("the support set is empty; give at least one example per class.")
    if query_x.dim() != support_x.dim() or query_x.shape[2:] != support_x.shape[2:]:
        raise ValueError(
            f"query_x {tuple(query_x.shape)} must be [B, Q] followed by the same image shape "
            f"as support_x {tuple(support_x.shape)}."
        )


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value
