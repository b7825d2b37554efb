"""The contrastive objective: InfoNCE against a loop reference, and a short real run through the Trainer whose
held-out figures the Embedder reproduces from the written run."""

import json
import math
import os

import numpy as np
import pytest

import quark_jax as qj
from conftest import REPO, read_metrics, tiny_overrides
from quark_jax.data import retrieval_pairs
from quark_jax.retrieval.embedder import Embedder
from quark_jax.training.objectives import ContrastiveEmbedding
from quark_jax.training.objectives.contrastive import eval_indices, info_nce, retrieval_figures

STEPS, BATCH, LENGTH, EVAL_PAIRS = 40, 16, 32, 64


def loop_info_nce(q, p, valid, temperature, symmetric):
    """Per-pair loss and top-1 correctness with explicit loops over the valid rows and columns."""
    n = len(q)
    rows = [i for i in range(n) if valid[i]]
    losses, correct = [], []
    for i in range(n):
        if not valid[i]:
            losses.append(0.0)
            correct.append(float(max(rows, key=lambda j: q[i] @ p[j]) == i))
            continue
        forward = -(q[i] @ p[i]) / temperature + math.log(sum(math.exp(q[i] @ p[j] / temperature) for j in rows))
        if symmetric:
            backward = -(q[i] @ p[i]) / temperature + math.log(sum(math.exp(q[j] @ p[i] / temperature) for j in rows))
            forward = 0.5 * (forward + backward)
        losses.append(forward)
        correct.append(float(max(rows, key=lambda j: q[i] @ p[j]) == i))
    return np.array(losses), np.array(correct)


@pytest.mark.parametrize("symmetric", [True, False])
def test_info_nce_matches_a_loop_reference(symmetric):
    rng = np.random.default_rng(0)
    q, p = rng.normal(size=(2, 6, 8))
    q, p = q / np.linalg.norm(q, axis=1, keepdims=True), p / np.linalg.norm(p, axis=1, keepdims=True)
    valid = np.array([1, 1, 1, 0, 1, 1], np.float32)
    got = info_nce(q.astype(np.float32), p.astype(np.float32), valid, 0.1, symmetric)
    loss, correct = loop_info_nce(q, p, valid, 0.1, symmetric)
    np.testing.assert_allclose(np.asarray(got["loss"]), loss, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(got["accuracy"])[valid > 0], correct[valid > 0])
    with pytest.raises(ValueError, match="temperature=0 must be > 0"):
        ContrastiveEmbedding(temperature=0)
    with pytest.raises(ValueError, match="tasks has 'qa'"):
        ContrastiveEmbedding(tasks=("qa",))


@pytest.fixture(scope="module")
def embed_run(trained_run, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("embed")
    trainer = qj.Trainer.from_gin(f"{REPO}/configs/runs/embed.gin", tiny_overrides(
        model_dir, STEPS, INIT_FROM=repr(trained_run["model_dir"]), BATCH_SIZE=BATCH,
        TASK_FEATURE_LENGTHS=f"{{'targets': {LENGTH}}}", CHECKPOINT_PERIOD=STEPS, **{
            # API question <-> docstring only: the pairs a few dozen steps of the tiny model learn (measured: held-out
            # in-batch accuracy 0.14 -> 0.25, MRR over 64 held-out pairs 0.15 -> 0.23, training loss 2.75 -> 1.77).
            "quark_jax.ContrastiveEmbedding.tasks": "('docs',)",
            "quark_jax.ContrastiveEmbedding.eval_pairs": EVAL_PAIRS,
            "quark_jax.TrainConfig.eval_every": STEPS,  # the initial and the final evaluation
            "quark_jax.OptimizerConfig.learning_rate": 1.5e-3}))
    trainer.run()
    return str(model_dir)


def test_training_learns_held_out_pairs_and_the_embedder_reads_the_run(embed_run):
    records = read_metrics(embed_run)
    train = [r["loss"] for r in records if "loss" in r]
    evals = [r for r in records if "val_accuracy" in r]
    print(json.dumps({"loss_first5": np.mean(train[:5]), "loss_last10": np.mean(train[-10:]), "evals": evals}))
    assert len(train) == STEPS and np.mean(train[:5]) > np.mean(train[-10:]) + 0.4  # ln 16 = 2.77 at the start
    assert [r["step"] for r in evals] == [0, STEPS]
    chance = 1 / BATCH
    assert evals[-1]["val_accuracy"] >= 3 * chance and evals[-1]["val_accuracy"] > evals[0]["val_accuracy"] + 0.06
    assert evals[-1]["val_mrr"] > evals[0]["val_mrr"] and evals[-1]["val_loss"] < evals[0]["val_loss"]

    with open(os.path.join(embed_run, "objective.json")) as f:
        info = json.load(f)
    assert info["kind"] == "contrastive_embedding" and info["max_len"] == LENGTH and info["pooling"] == "mean"
    # The Embedder reads the run as it was trained: its vectors of the held-out pairs (batched its own way)
    # give the figures the objective logged.
    embedder = Embedder.from_run(embed_run)
    assert json.loads(embedder.identity.split(":", 1)[1])["max_len"] == LENGTH
    pairs = retrieval_pairs.training_pairs("validation", ("docs",))
    chosen = [pairs[i] for i in eval_indices(len(pairs), EVAL_PAIRS)]
    figures = retrieval_figures(embedder.embed([q for q, _ in chosen], "query"),
                                embedder.embed([p for _, p in chosen], "passage"), BATCH, info["temperature"],
                                info["symmetric"])
    for key, value in figures.items():
        assert abs(value - evals[-1][key]) < 1e-4, (key, value, evals[-1][key])
