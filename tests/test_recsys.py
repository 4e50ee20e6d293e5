"""Cold-start recommendation on a generated MovieLens-100K folder: the time split, users as tasks,
MeLU, the mean baselines, and ``fastadapt train | eval | recommend`` end to end."""

from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch
from test_movielens import USERS, write_movielens

import fastadapt
from fastadapt.algorithms.maml import MAML
from fastadapt.cli import main
from fastadapt.config import load_preset
from fastadapt.datasets.movielens import load_movielens
from fastadapt.engine.build import build_learner, build_optimizer, initialise_from_data
from fastadapt.errors import ConfigError
from fastadapt.recsys.cold_start import NEW, PARTITIONS, TEST, TRAIN, VAL, cold_start_split
from fastadapt.recsys.mean_rating import MeanRating, item_means
from fastadapt.recsys.melu import MeLU
from fastadapt.recsys.user_tasks import ITEM_COLUMN, UserTasks, item_tokens, rating_features


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_movielens(tmp_path_factory.mktemp("movielens") / "ml-100k")


@pytest.fixture(scope="module")
def data(root):
    return load_movielens("movielens-100k", root)


def test_split_follows_time_is_reproducible_and_partitions_every_rating(data):
    split = cold_start_split(data, seed=0)
    again, other = cold_start_split(data, seed=0), cold_start_split(data, seed=1)
    assert np.array_equal(split.user_group, again.user_group)
    assert np.array_equal(split.new_item, again.new_item)
    # New users are the 20% who joined last (user u joins at u * 1000 s).
    assert data.user_ids[split.user_group == NEW].tolist() == list(range(33, USERS + 1))
    # New items are the 20% released last (the generated items 24-30 are from 1998-2000).
    assert split.new_item.sum() == 6 and (data.years[split.new_item] >= 1998).all()
    assert set(data.item_ids[data.years >= 1999]) <= set(data.item_ids[split.new_item])
    counts = np.bincount(split.user_group, minlength=4)
    assert counts[[VAL, TEST, NEW]].tolist() == [3, 3, 8] and counts[TRAIN] == 26
    # The seed picks the validation and test users among the existing ones, not who is new.
    assert not np.array_equal(split.user_group, other.user_group)
    assert np.array_equal(split.user_group == NEW, other.user_group == NEW)
    # The six partitions divide the ratings: each rating in exactly one.
    parts = np.concatenate([split.ratings(data, p) for p in PARTITIONS])
    assert np.array_equal(np.sort(parts), np.arange(len(data.rating)))
    with pytest.raises(ConfigError, match="unknown cold-start partition 'cold'"):
        split.ratings(data, "cold")


def _user_rows(data, split, partition, user_id):
    """The rating indices of one user in a partition, in time order (ties by item)."""
    rows = split.ratings(data, partition)
    rows = rows[data.user_ids[data.rating_user[rows]] == user_id]
    return rows[np.lexsort((data.rating_item[rows], data.timestamp[rows]))]


def test_support_is_a_users_first_ratings_and_the_query_the_rest(data):
    split = cold_start_split(data)
    tokens = item_tokens(data, split)
    tasks = UserTasks(data, split, "new-users", shots=3, queries=100, seed=0)
    assert len(tasks) == 8 and tasks.skipped == 0
    for index, user in enumerate(tasks.users):
        rows = _user_rows(data, split, "new-users", user)
        task = tasks.task(index)
        inputs = rating_features(
            data, data.user_features[data.rating_user[rows]], data.rating_item[rows], tokens
        )
        assert torch.equal(task.support_x, torch.from_numpy(inputs[:3]))
        assert torch.equal(task.query_x, torch.from_numpy(inputs[3:]))
        assert task.query_y[:, 0].tolist() == data.rating[rows[3:]].tolist()
        # No rating in both: the support and query rows are distinct ratings, in time order.
        support, query = rows[:3], rows[3:]
        assert not set(support) & set(query)
        assert not set(data.rating_item[support]) & set(data.rating_item[query])
        assert data.timestamp[support].max() <= data.timestamp[query].min()


def test_query_caps_skips_and_task_order_are_seeded_and_checked(data):
    split = cold_start_split(data)
    capped = UserTasks(data, split, "train", shots=3, queries=2, seed=0)
    again = UserTasks(data, split, "train", shots=3, queries=2, seed=0)
    other = UserTasks(data, split, "train", shots=3, queries=2, seed=1)
    assert all(torch.equal(capped.task(i).query_x, again.task(i).query_x) for i in range(5))
    assert any(not torch.equal(capped.task(i).query_x, other.task(i).query_x) for i in range(5))
    assert all(capped.task(i).query_x.shape[0] == 2 for i in range(len(capped)))
    # Every task index names an existing user; an index past them is refused.
    with pytest.raises(IndexError, match="of the 26 users of the train partition"):
        capped.task(26)
    # Training order: each epoch visits every user once, in a new seeded order.
    train = UserTasks(data, split, "train", shots=3, queries=2, seed=0, shuffle=True)
    epoch = [train._user(i) for i in range(26)]
    assert sorted(epoch) == list(range(26))
    assert [train._user(i) for i in range(26, 52)] != epoch
    counts = sorted(len(_user_rows(data, split, "train", u)) for u in train.users)
    shots = counts[len(counts) // 2]
    with pytest.warns(UserWarning, match=f"users have fewer than {shots + 1} ratings") as record:
        few = UserTasks(data, split, "train", shots=shots, queries=5, seed=0)
    assert few.skipped == sum(c <= shots for c in counts) > 0
    assert f"{few.skipped} of 26 users" in str(record[0].message)
    with pytest.raises(ConfigError, match="lower the support size"):
        UserTasks(data, split, "train", shots=100, queries=5, seed=0)
    batch = capped.batch(range(4))
    assert batch.query_mask is None and batch.support_x.shape == (4, 3, 24)


def test_items_never_trained_on_have_the_unknown_token(data):
    split = cold_start_split(data)
    tokens = item_tokens(data, split)
    trained = np.unique(data.rating_item[split.ratings(data, "train")])
    assert (tokens[split.new_item] == 0).all()
    assert np.array_equal(tokens[trained], data.item_ids[trained])


def test_melu_embeds_unknown_codes_as_zeros_and_adapts_its_decision_layers():
    model = MeLU(num_items=30, embedding_dim=4, hidden=[8])
    x = torch.zeros(2, 24)
    x[1, :6] = torch.tensor([1.0, 2, 3, 4, 5, 30])
    x[1, 6:9] = 1.0  # three genres: their embeddings are averaged
    embedded = model.embedding(x)
    assert embedded.shape == (2, 28) and embedded[0].eq(0).all() and embedded[1].ne(0).any()
    genres = model.embedding.flags.weight[:, :3].sum(dim=1) / 3
    assert torch.allclose(embedded[1, 24:], genres)
    assert model(x).shape == (2, 1) and model.decision[-1].bias.item() == 3.0
    learner = MAML(model, problem="rating", adapt=["decision"])
    assert learner.adapted_names and all(n.startswith("decision.") for n in learner.adapted_names)
    with pytest.raises(ValueError, match="expected inputs with 24 columns"):
        model(torch.zeros(2, 23))


def _training_users(data):
    """The cold-start split, its training users as tasks, the rows of their ratings and the
    mean of those ratings."""
    split = cold_start_split(data)
    train = UserTasks(data, split, "train", shots=3, queries=50, seed=0, shuffle=True)
    rows = split.ratings(data, "train")
    return split, train, rows, data.rating[rows].mean()


@pytest.mark.filterwarnings("ignore:.*are left out")
def test_mean_baselines_are_the_training_means(data):
    split, train, rows, overall = _training_users(data)
    per_item = MeanRating.fit(train, per_item=True)
    for item in np.unique(data.rating_item[rows])[:5]:
        expected = data.rating[rows][data.rating_item[rows] == item].mean()
        assert per_item.means[data.item_ids[item]].item() == pytest.approx(expected)
    assert per_item.means[0].item() == pytest.approx(overall)  # items never trained on
    overall_only = MeanRating.fit(train, per_item=False)
    assert torch.allclose(overall_only.means, torch.tensor(overall))
    test = UserTasks(data, split, "new-both", shots=1, queries=50, seed=0)
    batch = test.batch(range(len(test)))
    metrics = per_item.task_metrics(batch)
    assert metrics["mae"].shape == (len(test),) and "ndcg3" in metrics
    predictor = per_item.adapt(batch.support_x[0], batch.support_y[0])
    assert torch.allclose(predictor(batch.query_x[0]), torch.full_like(batch.query_y[0], overall))
    assert (batch.query_x[..., ITEM_COLUMN] == 0).all()  # new items: the global mean


@pytest.mark.filterwarnings("ignore:.*are left out")
def test_item_means_are_shrunk_toward_the_global_mean(data):
    _, train, rows, overall = _training_users(data)
    size = int(data.item_ids.max()) + 1
    item = np.unique(data.rating_item[rows])[0]
    ratings = data.rating[rows][data.rating_item[rows] == item]
    token = data.item_ids[item]
    for shrinkage in (0.0, 5.0):
        means = item_means(train, size, shrinkage)
        expected = (ratings.sum() + shrinkage * overall) / (len(ratings) + shrinkage)
        assert means.shape == (size,) and means[token].item() == pytest.approx(expected)
        assert means[0].item() == pytest.approx(overall)  # the unknown item: never rated
    per_item = MeanRating.fit(train, per_item=True).means
    assert torch.allclose(item_means(train, size)[: len(per_item)], per_item)
    with pytest.raises(ValueError, match="leaves out item token"):
        item_means(train, 2)
    with pytest.raises(ValueError, match="shrinkage must be >= 0"):
        item_means(train, size, -1.0)


def test_melu_with_an_item_prior_predicts_corrections_of_it():
    prior = torch.arange(31, dtype=torch.float32) / 10 + 1
    model = MeLU(num_items=30, embedding_dim=4, hidden=[8], item_prior=prior)
    assert model.decision[-1].bias.item() == 0.0
    assert "item_prior" in model.state_dict()  # saved with the model
    assert "item_prior" not in dict(model.named_parameters())  # neither trained nor adapted
    x = torch.zeros(3, 24)
    x[:, ITEM_COLUMN] = torch.tensor([0.0, 7, 30])
    correction = model.decision(model.embedding(x))
    assert torch.allclose(model(x), correction + prior[[0, 7, 30]].unsqueeze(1))
    learner = MAML(model, problem="rating", adapt=["decision"], inner_lr=0.05)
    y = torch.full((1, 3, 1), 5.0)
    before = learner.task_losses(learner._forward_tasks({}, x[None]), y)
    *_, adapted = learner._inner_loop(x[None], y, 1, training=False)
    after = learner.task_losses(learner._forward_tasks(adapted, x[None]), y)
    assert after.item() < before.item()  # the local update moves the predictions toward 5
    with pytest.raises(ValueError, match="one rating per item token"):
        MeLU(num_items=30, embedding_dim=4, hidden=[8], item_prior=torch.zeros(30))


@pytest.mark.filterwarnings("ignore:.*are left out")
def test_item_prior_and_weight_decay_from_the_configuration(root):
    config = load_preset("movielens100k-melu").override(
        [f"data.root='{root}'", "model.embedding_dim=4", "model.hidden=[8]"]
    )
    plain = build_learner(config.override(["model.item_prior=false"]))
    assert plain.model.item_prior is None and plain.model.decision[-1].bias.item() == 3.0
    exact = config.override(["model.item_prior=true", "model.item_prior_shrinkage=0"])
    with_prior = build_learner(exact)  # no data read: a placeholder until training starts
    assert with_prior.model.item_prior.eq(3.0).all()
    data = load_movielens("movielens-100k", root)
    split = cold_start_split(data, config.data.split_seed)
    train = UserTasks(data, split, "train", config.task.shots, config.task.queries, 0)
    initialise_from_data(exact, with_prior, train)
    means = MeanRating.fit(train, per_item=True).means
    assert torch.allclose(with_prior.model.item_prior[: len(means)], means)
    initialise_from_data(exact, plain, train)  # nothing to do without a prior
    assert plain.model.item_prior is None
    optimizer = build_optimizer(config.override(["train.weight_decay=0.01"]), plain)
    assert optimizer.param_groups[0]["weight_decay"] == 0.01
    with pytest.raises(ConfigError, match=r"model\.item_prior is an option of model\.kind=melu"):
        config.override(["model.kind=mlp", "model.item_prior=true"])
    with pytest.raises(ConfigError, match=r"train\.weight_decay must be >= 0"):
        config.override(["train.weight_decay=-1"])


TINY = [
    "task.shots=3",
    "eval.shots=3",
    "task.queries=8",
    "model.embedding_dim=4",
    "model.hidden=[8]",
    "train.steps=4",
    "train.meta_batch=4",
    "train.val_every=2",
    "train.checkpoint_every=2",
    "eval.batch=8",
]


@pytest.fixture(scope="module")
def trained(root, tmp_path_factory):
    """A few steps of the MeLU preset on the generated folder: the run and what train printed."""
    run = tmp_path_factory.mktemp("runs") / "melu"
    settings = [arg for s in (*TINY, f"data.root='{root}'") for arg in ("--set", s)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["train", "movielens100k-melu", *settings, "--out", str(run), "--no-progress"])
    assert code == 0
    return run, printed.getvalue()


def test_train_eval_and_recommend_for_a_new_user(trained, tmp_path, capsys):
    run, out = trained
    assert "partition=new-users" in out and "adapt=['decision']" in out and "ndcg3@1" in out
    assert main(["eval", str(run), "--set", "eval.partition=new-items"]) == 0
    assert "partition=new-items" in capsys.readouterr().out
    evaluations = json.loads((run / "results.json").read_text())["evaluations"]
    assert [e["protocol"]["partition"] for e in evaluations] == ["new-users", "new-items"]
    assert evaluations[0]["protocol"]["tasks"] == 8  # every new user, once
    assert main(["eval", str(run), "--set", "eval.partition=cold"]) == 2
    assert "unknown cold-start partition" in capsys.readouterr().err

    ratings = tmp_path / "me.csv"
    ratings.write_text("item,rating,title\n1,5,Movie 1\n2,4,\n7,1,Misérables\n9,3,\n")
    args = ["recommend", str(run), "--ratings", str(ratings), "--top", "3", "--user", "age=30"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    ranked = [line.split() for line in lines[3:]]
    assert len(ranked) == 3 and {r[1] for r in ranked}.isdisjoint({"1", "2", "7", "9"})
    scores = [float(r[-1]) for r in ranked]
    assert scores == sorted(scores, reverse=True)
    prior = fastadapt.load(run).learner.model.item_prior  # the preset's, set by training
    assert prior is not None and prior.ne(3.0).any()


@pytest.mark.parametrize(
    ("content", "user", "message"),
    [
        ("item,rating\n1,5\n99,4\n31,3\n2,2\n", [], "no item with id 31, 99"),
        ("item,rating\n1,5\n2,7\n3,3\n", [], "line 3: rating 7 is outside 1..5"),
        ("item,rating\n1,5\n2,4\n", [], "has 2 rating.s., .* rate 1 more"),
        ("item,rating\n1,5\n2,4\n1,3\n", [], r"rates item 1 twice \(lines 2 and 4\)"),
        ("movie,stars\n1,5\n", [], "header line naming the columns item and rating"),
        ("item,rating\nx,5\n", [], "item 'x' is not a MovieLens item id"),
        ("item,rating\n1,5\n2,4\n3,3\n", ["age=old"], "age must be a whole number"),
        ("item,rating\n1,5\n2,4\n3,3\n", ["height=2"], "unknown user feature 'height'"),
        ("item,rating\n1,5\n2,4\n3,3\n", ["zip"], "--user expects KEY=VALUE"),
    ],
)
def test_bad_ratings_files_get_a_clear_error(trained, tmp_path, capsys, content, user, message):
    ratings = tmp_path / "me.csv"
    ratings.write_text(content)
    users = [arg for u in user for arg in ("--user", u)]
    assert main(["recommend", str(trained[0]), "--ratings", str(ratings), *users]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
