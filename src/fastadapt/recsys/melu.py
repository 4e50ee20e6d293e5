"""MeLU's user preference estimator (Lee et al. 2019, "MeLU: Meta-Learned User Preference
Estimator for Cold-Start Recommendation", KDD, arXiv:1908.00413, §3.1 and Figure 2).

The user's and the item's categorical contents are embedded, one table per content
(Eqs. 1-2: ``U_i = [e_i1 c_i1; …; e_iP c_iP]``, ``I_j`` likewise), and concatenated into
``x_0 = [U_i; I_j]``; ``N`` fully connected decision-making layers with ReLU and a linear output
layer give the rating (Eq. 3: ``x_n = a(W_nᵀ x_{n−1} + b_n)``, ``ŷ_ij = W_oᵀ x_N + b_o``).

MeLU adapts the decision-making and output layers to each user (the "local update" of θ2,
§3.2) and learns the embeddings θ1 in the "global update" only: :class:`MeLU` names them
``decision`` and ``embedding``, so MeLU is ``MAML(MeLU(...), adapt=["decision"])``.

The contents are those of :mod:`fastadapt.recsys.user_tasks`: gender, age, occupation and zip
region of the user; release year, item token and genres of the item. Genres are multi-valued:
their embedding is the mean of the embeddings of the item's genres. Code 0 (unknown, or an item
never trained on) embeds to zeros. The paper's MovieLens items also have IMDb contents (rating,
director, actors), which the GroupLens files lack; the item token stands in for them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fastadapt.datasets.movielens import GENRES, USER_CARDINALITIES, YEAR_CARDINALITY
from fastadapt.nn.mlp import MLP
from fastadapt.recsys.user_tasks import ITEM_COLUMN


class FeatureEmbedding(nn.Module):
    """Concatenated embeddings of categorical codes, then of multi-hot flags (their mean).

    Args:
        cardinalities: the number of codes of each categorical column, 0 (unknown) included.
        flags: the number of multi-hot columns after them.
        dim: the embedding dimension ``d_e``.
    """

    def __init__(self, cardinalities: Sequence[int], flags: int, dim: int) -> None:
        super().__init__()
        if dim < 1 or flags < 1 or any(c < 2 for c in cardinalities):
            raise ValueError(
                f"embedding needs dim >= 1, flags >= 1 and cardinalities >= 2, got {dim}, "
                f"{flags} and {list(cardinalities)}."
            )
        self.tables = nn.ModuleList(nn.Embedding(c, dim, padding_idx=0) for c in cardinalities)
        self.flags = nn.Linear(flags, dim, bias=False)
        self.in_features = len(cardinalities) + flags
        self.out_features = (len(cardinalities) + 1) * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[..., in_features]`` (codes, then flags) to ``[..., out_features]``."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"expected inputs with {self.in_features} columns (codes then flags), got "
                f"shape {tuple(x.shape)}."
            )
        codes, flags = x[..., : len(self.tables)].long(), x[..., len(self.tables) :]
        parts = [table(codes[..., column]) for column, table in enumerate(self.tables)]
        parts.append(self.flags(flags) / flags.sum(dim=-1, keepdim=True).clamp(min=1))
        return torch.cat(parts, dim=-1)


class MeLU(nn.Module):
    """The user preference estimator: ``embedding`` (θ1), then ``decision`` (θ2).

    Args:
        num_items: the largest item token (the dataset's largest MovieLens item id).
        embedding_dim: ``d_e`` of every embedding (32 in the paper).
        hidden: sizes of the decision-making layers (two of 64 in the paper).
        output_bias: the initial bias ``b_o`` of the output layer without ``item_prior``, the
            middle of the 1-5 scale by default, so that training starts from plausible
            ratings. (The paper does not say; from 0, MAML learns an initialisation whose
            un-adapted ratings are near 0 and whose first local update must carry them to the
            scale.)
        item_prior: a rating per item token ``[num_items + 1]`` (token 0: unknown items), e.g.
            the shrunk mean training rating of :func:`~fastadapt.recsys.mean_rating.item_means`
            (``model.item_prior``: training sets it, :meth:`set_item_prior`).
            The network then predicts each rating as a correction of the item's prior, Eq. 3
            plus a constant: ``ŷ_ij = prior_j + W_oᵀ x_N + b_o``, with ``b_o`` starting at 0,
            so that training starts from the per-item mean rather than having to learn it
            through the item embeddings, and the local update of ``b_o`` is a user's offset
            from it. The prior is a buffer: saved with the model, never trained or adapted.
            (An addition to the paper, whose Eq. 3 has no such term.)

    Maps rating rows ``[n, len(FEATURES)]`` to predicted ratings ``[n, 1]``.
    """

    item_prior: torch.Tensor | None

    def __init__(
        self,
        num_items: int,
        embedding_dim: int = 32,
        hidden: Sequence[int] = (64, 64),
        output_bias: float = 3.0,
        item_prior: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        cardinalities = (*USER_CARDINALITIES, YEAR_CARDINALITY, num_items + 1)
        self.embedding = FeatureEmbedding(cardinalities, len(GENRES), embedding_dim)
        self.decision = MLP(self.embedding.out_features, hidden, 1)
        self.register_buffer("item_prior", None)
        if item_prior is not None:
            self.item_prior = torch.empty(num_items + 1)
            self.set_item_prior(item_prior)
        nn.init.constant_(self.decision[-1].bias, 0.0 if item_prior is not None else output_bias)

    def set_item_prior(self, prior: torch.Tensor) -> None:
        """Replace the item prior (in place: it keeps its device) of a model built with one."""
        if self.item_prior is None:
            raise ValueError("this MeLU was built without an item prior; pass item_prior.")
        if prior.shape != self.item_prior.shape:
            raise ValueError(
                f"item_prior must hold one rating per item token, shape "
                f"{tuple(self.item_prior.shape)}, got {tuple(prior.shape)}."
            )
        with torch.no_grad():
            self.item_prior.copy_(prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Ratings ``[..., 1]`` of rating rows ``x`` ``[..., len(FEATURES)]`` (Eqs. 1-3)."""
        rating = self.decision(self.embedding(x))
        if self.item_prior is not None:
            rating = rating + self.item_prior[x[..., ITEM_COLUMN].long()].unsqueeze(-1)
        return rating
