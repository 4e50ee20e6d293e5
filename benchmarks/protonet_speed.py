"""Wall time of one Prototypical Networks training episode on CPU: fastadapt against peers.

Workload (identical for every implementation): the Conv-4 embedding (four blocks of 3x3
convolution with 64 filters, BatchNorm, ReLU, 2x2 max-pool; the same initial weights
everywhere), one Omniglot-shaped 5-way 5-shot episode with 15 queries per class (25 support
and 75 query images, 1x28x28, float32), class prototypes as mean support embeddings, a softmax
over negative distances, the query cross-entropy, ``backward()`` and an Adam step (lr 1e-3;
fused for fastadapt, as its trainer uses it). The episode's tensors are generated once (same
seed, same tensors for everyone), so the timing is the training step itself. Rows:

- ``fastadapt``: ``ProtoNet(Conv4(1))`` and ``meta_loss`` on a one-task ``TaskBatch``: the
  project's Conv-4 (channels-last activations, ReLU after the max-pool, the first BatchNorm
  folded into its convolution from the input's patch statistics; see
  ``fastadapt.nn.conv4``), squared Euclidean distance in one GEMM.
- ``fastadapt, textbook Conv-4``: the same ``ProtoNet`` around the plain
  ``nn.Sequential(conv, BatchNorm, ReLU, pool)`` stack that the peers use: what the backbone
  contributes.
- ``fastadapt, bfloat16``: the first row in mixed precision (``train.precision =
  "bfloat16"``, :mod:`fastadapt.nn.precision`): the backbone in bfloat16, the head, loss and
  weights in float32. Not the float32 workload of the other rows: a separate figure, fast on
  CPUs with AMX or AVX-512 BF16 units.
- ``plain PyTorch``: the textbook stack and the paper authors' recipe (support and query
  embedded in one pass, prototypes by ``mean``, squared distances by broadcasting).
- ``plain PyTorch, bfloat16``: the same with the backbone under bfloat16 autocast, what mixed
  precision gives without fastadapt.
- ``easyfsl``: ``PrototypicalNetworks(backbone)``: ``process_support_set`` then the query
  forward (its scores are minus the *unsquared* Euclidean distance, ``torch.cdist``).
- ``learn2learn``: ``l2l.nn.PrototypicalClassifier`` (``fit_`` on the support embeddings).
- ``torchmeta``: ``torchmeta.utils.prototype.get_prototypes`` and ``prototypical_loss``.

The peers' backbone is the textbook stack with PyTorch's default BatchNorm (running statistics
updated in training, as users write it); fastadapt's BatchNorm uses batch statistics only, and
fastadapt embeds support and query images in separate passes (so that prototypes never depend
on queries). Losses therefore agree only between rows with the same recipe; the loss check
line compares plain PyTorch, learn2learn and torchmeta, which share it.

Measurement: interleaved rounds of worker subprocesses (``benchmarks/_interleaved.py``), 2
torch threads by default; each row's GFLOP/s divides the plain PyTorch step's convolution and
matrix-product FLOPs by its median time. Run from the project root with the project's venv:

    python benchmarks/protonet_speed.py [--rounds 20] [--iters-per-round 10] [--threads 2]
    PYTHONPATH=src python benchmarks/protonet_speed.py --impl fastadapt  # debugging: one

Prints a markdown table and writes ``benchmarks/results/protonet_speed.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from _interleaved import OURS, PROJECT_ROOT, Benchmark, Impl, Step, counted_flops, main
from torch import nn

WAYS, SHOTS, QUERIES, SIDE, HIDDEN = 5, 5, 15, 28, 64
LR = 1e-3
SEED = 0
PEERS = ("easyfsl", "learn2learn", "torchmeta")
BASELINE = "plain PyTorch"


@dataclass(frozen=True)
class _Episode:
    """One 5-way 5-shot 15-query episode, examples ordered class by class."""

    support_x: torch.Tensor  # [25, 1, 28, 28]
    support_y: torch.Tensor  # [25]
    query_x: torch.Tensor  # [75, 1, 28, 28]
    query_y: torch.Tensor  # [75]


def _episode() -> _Episode:
    gen = torch.Generator().manual_seed(SEED)
    images = torch.rand(WAYS * (SHOTS + QUERIES), 1, SIDE, SIDE, generator=gen)
    support_y = torch.arange(WAYS).repeat_interleave(SHOTS)
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES)
    return _Episode(images[: WAYS * SHOTS], support_y, images[WAYS * SHOTS :], query_y)


def _textbook_conv4(track_running_stats: bool = True) -> nn.Sequential:
    """``4 x [conv 3x3, BatchNorm, ReLU, max-pool 2]``, flattened: the usual few-shot backbone."""

    def block(in_channels: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_channels, HIDDEN, 3, padding=1),
            nn.BatchNorm2d(HIDDEN, track_running_stats=track_running_stats),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    return nn.Sequential(block(1), block(HIDDEN), block(HIDDEN), block(HIDDEN), nn.Flatten())


def _initial_parameters() -> dict[str, torch.Tensor]:
    """The shared initial weights (convolutions and BatchNorm affine parameters)."""
    torch.manual_seed(SEED)
    return _textbook_conv4(track_running_stats=False).state_dict()


def _load(model: nn.Module) -> nn.Module:
    missing, unexpected = model.load_state_dict(_initial_parameters(), strict=False)
    if unexpected or any(not name.endswith(_BATCHNORM_BUFFERS) for name in missing):
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return model


_BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _training_step(parameters: object, loss_of_episode: Step, fused: bool = False) -> Step:
    optimizer = torch.optim.Adam(parameters, lr=LR, fused=fused)  # type: ignore[arg-type]

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_of_episode()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _build_fastadapt(textbook: bool, precision: str = "float32") -> tuple[Step, str]:
    from fastadapt import ProtoNet, TaskBatch
    from fastadapt.nn.conv4 import Conv4
    from fastadapt.nn.precision import training_autocast

    backbone = _textbook_conv4(track_running_stats=False) if textbook else Conv4(1, HIDDEN)
    learner = ProtoNet(_load(backbone))
    e = _episode()
    batch = TaskBatch(
        e.support_x.unsqueeze(0), e.support_y.unsqueeze(0), e.query_x.unsqueeze(0),
        e.query_y.unsqueeze(0),
    )  # fmt: skip

    def loss() -> torch.Tensor:
        with training_autocast(torch.device("cpu"), precision):
            return learner.meta_loss(batch).loss

    step = _training_step(learner.parameters(), loss, True)
    note = "ProtoNet.meta_loss, fused Adam" + (", textbook Conv-4" if textbook else "")
    return step, note + (f", {precision} autocast" if precision != "float32" else "")


def _build_plain(precision: str = "float32") -> tuple[Step, str]:
    model = _load(_textbook_conv4())
    e = _episode()
    images = torch.cat([e.support_x, e.query_x])

    def loss() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            embeddings = model(images).float()
        support, query = embeddings[: WAYS * SHOTS], embeddings[WAYS * SHOTS :]
        prototypes = support.view(WAYS, SHOTS, -1).mean(dim=1)
        distances = (query.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(dim=2)
        return F.cross_entropy(-distances, e.query_y)

    note = "one pass over support + query"
    return _training_step(model.parameters(), loss), note + (
        f", {precision} autocast of the backbone" if precision != "float32" else ""
    )


def _build_easyfsl() -> tuple[Step, str]:
    from easyfsl.methods import PrototypicalNetworks

    model = PrototypicalNetworks(_load(_textbook_conv4()))
    e = _episode()

    def loss() -> torch.Tensor:
        model.process_support_set(e.support_x, e.support_y)
        return F.cross_entropy(model(e.query_x), e.query_y)

    return _training_step(model.parameters(), loss), "PrototypicalNetworks"


def _build_learn2learn() -> tuple[Step, str]:
    from learn2learn.nn import PrototypicalClassifier

    model = _load(_textbook_conv4())
    classifier = PrototypicalClassifier(distance="euclidean")
    e = _episode()
    images = torch.cat([e.support_x, e.query_x])

    def loss() -> torch.Tensor:
        embeddings = model(images)
        classifier.fit_(embeddings[: WAYS * SHOTS], e.support_y)
        return F.cross_entropy(classifier(embeddings[WAYS * SHOTS :]), e.query_y)

    return _training_step(model.parameters(), loss), "PrototypicalClassifier"


def _build_torchmeta() -> tuple[Step, str]:
    from torchmeta.utils.prototype import get_prototypes, prototypical_loss

    model = _load(_textbook_conv4())
    e = _episode()
    images = torch.cat([e.support_x, e.query_x])

    def loss() -> torch.Tensor:
        embeddings = model(images).unsqueeze(0)
        support, query = embeddings[:, : WAYS * SHOTS], embeddings[:, WAYS * SHOTS :]
        prototypes = get_prototypes(support, e.support_y.unsqueeze(0), WAYS)
        return prototypical_loss(prototypes, query, e.query_y.unsqueeze(0))

    return _training_step(model.parameters(), loss), "get_prototypes + prototypical_loss"


BENCHMARK = Benchmark(
    script=__file__,
    description=__doc__.split("\n\n")[0],
    impls={
        OURS: Impl("fastadapt", lambda: _build_fastadapt(textbook=False), False, None, False),
        f"{OURS}, textbook Conv-4": Impl(
            "fastadapt", lambda: _build_fastadapt(textbook=True), False, None, False
        ),
        f"{OURS}, bfloat16": Impl(
            "fastadapt", lambda: _build_fastadapt(False, "bfloat16"), False, None, False
        ),
        BASELINE: Impl("torch", _build_plain, peer=False),
        f"{BASELINE}, bfloat16": Impl("torch", lambda: _build_plain("bfloat16"), peer=False),
        "easyfsl": Impl("easyfsl", _build_easyfsl, True, "easyfsl", shared_data=False),
        "learn2learn": Impl("learn2learn", _build_learn2learn, peer=True, shim="l2l"),
        "torchmeta": Impl("torchmeta", _build_torchmeta, peer=True, shim="torchmeta"),
    },
    peers=PEERS,
    baseline=BASELINE,
    workload={
        "model": "Conv-4 (64 filters, BatchNorm, ReLU, max-pool), 1x28x28 inputs",
        "episode": f"{WAYS}-way {SHOTS}-shot, {QUERIES} queries per class",
        "distance": "squared Euclidean (easyfsl: Euclidean)",
        "optimizer": f"Adam lr={LR} (fused for fastadapt)",
        "dtype": "float32",
    },
    results=PROJECT_ROOT / "benchmarks" / "results" / "protonet_speed.json",
    flops=counted_flops(_build_plain),
    warmup=10,
    rounds=20,
    iters_per_round=10,
)


if __name__ == "__main__":
    main(BENCHMARK)
