"""The intent set, the sequence-classification objective on a real short run, the Classifier against an
un-jitted reference, and the Router dispatching with the trained classifier."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import quark_jax as qj
from conftest import REPO, read_metrics, tiny_overrides
from quark_jax import gin_utils
from quark_jax.agents.router import Router
from quark_jax.agents.specialists import DirectAgent, Leader, ReasoningAgent, arithmetic_expression
from quark_jax.data import intents
from quark_jax.inference.classifier import Classifier
from quark_jax.training.objectives import SequenceClassifier
from quark_jax.training.objectives.classify import tokenized_examples

INTENT_CONFIG = f"{REPO}/configs/runs/intent.gin"


def qj_calc(expression):
    a, op, b = expression.split(" ")
    return {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def read(path):
    return [json.loads(line) for line in open(path)]


def test_shipped_set_is_the_builder_output_and_holds_out_templates_and_sources(tmp_path):
    counts = intents.build(str(tmp_path))
    for split, count in counts.items():
        built = (tmp_path / f"{split}.jsonl").read_text()
        assert built == open(intents.split_path("data/intents", split)).read(), split
        assert count == len(built.splitlines())
    train, validation = read(tmp_path / "train.jsonl"), read(tmp_path / "validation.jsonl")
    assert {r["label"] for r in train} == {r["label"] for r in validation} == set(intents.LABELS)
    assert not {r["template"] for r in train} & {r["template"] for r in validation}
    assert not {r["text"] for r in train} & {r["text"] for r in validation}
    # No stdlib name of a held-out row occurs in a training row of any class (held out by module).
    held_out = {f.qualname for f in intents._functions("validation")}
    assert held_out and not any(q in r["text"] for r in train for q in held_out if "." in q)
    assert all(len([r for r in train if r["label"] == label]) <= intents.CAPS["train"] for label in intents.LABELS)


def test_config_builds_and_bad_labels_are_named(tmp_path):
    gin_utils.parse([INTENT_CONFIG], ["MODEL_DIR='/tmp/unused'", "INIT_FROM='/tmp/x'"])
    config = gin_utils.build_train_config()
    assert isinstance(config.objective, SequenceClassifier) and config.objective.labels == intents.LABELS
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "hi", "label": "chitchat"}\n{"text": "2+2", "label": "maths"}\n')
    with pytest.raises(ValueError, match=r"label\(s\) \['maths'\] are not among the classes \['chitchat'\]"):
        tokenized_examples(str(path), ("chitchat",), 16, None)
    path.write_text('{"text": "hi"}\n')
    with pytest.raises(ValueError, match=r"train.jsonl:1: a classification record needs string fields"):
        tokenized_examples(str(path), ("chitchat",), 16, None)
    with pytest.raises(ValueError, match="repeats a class"):
        SequenceClassifier(labels=("a", "a"))


@pytest.fixture(scope="module")
def intent_run(trained_run, tmp_path_factory):
    """The tiny test model trained 40 steps as an intent classifier on the shipped set."""
    model_dir = tmp_path_factory.mktemp("intent")
    trainer = qj.Trainer.from_gin(INTENT_CONFIG, tiny_overrides(
        model_dir, 40, INIT_FROM=repr(trained_run["model_dir"]), BATCH_SIZE=16,
        TASK_FEATURE_LENGTHS="{'targets': 48}", CHECKPOINT_PERIOD=40, **{
            "quark_jax.OptimizerConfig.learning_rate": 1e-3, "quark_jax.OptimizerConfig.warmup_steps": 5}))
    summary = trainer.run()
    return {"model_dir": str(model_dir), "summary": summary}


def test_loss_falls_and_held_out_accuracy_beats_chance(intent_run):
    records = read_metrics(intent_run["model_dir"])
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[0] == pytest.approx(math.log(6), abs=1e-4)  # the zero head: uniform over six classes
    assert np.mean(losses[-5:]) < 0.6 * math.log(6)
    final = [r for r in records if "val_accuracy" in r][-1]
    assert final["val_accuracy"] > 0.4  # chance is 1/6; held-out templates and modules
    assert set(k for k in final if k.startswith("val_accuracy/")) == {f"val_accuracy/{x}" for x in intents.LABELS}
    info = json.load(open(f"{intent_run['model_dir']}/objective.json"))
    assert info == {"kind": "sequence_classifier", "labels": list(intents.LABELS), "pooling": "mean", "max_len": 48,
                    "data_dir": "data/intents"}


def reference_probabilities(model, texts, max_len):
    """One text at a time, unpadded, un-jitted: the full forward pass, the mean of the hidden states, then the
    head in numpy float64."""
    head = {k: np.asarray(v, np.float64) for k, v in model.heads["classifier"].items()}
    module = nnx.merge(model.graphdef, model.params)
    out = []
    for text in texts:
        ids = [0] + list(model.tokenizer.encode(text))[: max_len - 2] + [model.tokenizer.eos_id]
        tokens = jnp.asarray([ids], jnp.int32)
        positions = jnp.arange(len(ids), dtype=jnp.int32)[None]
        hidden = module(tokens, positions, jnp.ones_like(tokens), return_hidden=True)[-1]  # eager, op by op
        pooled = np.asarray(hidden[0], np.float64).mean(axis=0)
        logits = pooled @ head["w"] + head["b"]
        exp = np.exp(logits - logits.max())
        out.append(exp / exp.sum())
    return np.array(out)


def test_classifier_equals_an_unjitted_reference(intent_run, trained_run):
    model = qj.load(intent_run["model_dir"])
    classifier = Classifier.from_loaded(model, batch_size=2)
    texts = ["What is 12 + 30?", "Tell me a joke about cats.", "Summarise this docstring: " + "Return x. " * 40,
             "Write a Python function `dumps(obj)` that does this: Serialize obj.", "hi"]
    got = classifier.probabilities(texts)
    expected = reference_probabilities(model, texts, classifier.max_len)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    proba = classifier.predict_proba(texts)
    assert list(proba[0]) == list(intents.LABELS) and sum(proba[0].values()) == pytest.approx(1.0, abs=1e-5)
    assert classifier.predict(texts) == [intents.LABELS[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(classifier.probabilities(texts[::-1]), got[::-1], atol=1e-6)  # order and batching
    with pytest.raises(ValueError, match="not a sequence-classifier run"):
        Classifier.from_loaded(qj.load(trained_run["model_dir"]))


def test_router_with_the_trained_classifier_dispatches(intent_run, trained_run):
    classifier = qj.load_classifier(intent_run["model_dir"])
    validation = read(intents.split_path("data/intents", "validation"))
    router = Router(classifier, rule_bias=0.0, split=False)  # the classifier alone decides the intent
    routes = router.route_many([r["text"] for r in validation])
    assert all(r.signals["source"] == "classifier" for r in routes)
    # Routing the held-out rows through the Classifier gives the accuracy the trainer's sharded evaluation logged.
    logged = [r for r in read_metrics(intent_run["model_dir"]) if "val_accuracy" in r][-1]
    correct = [r.intent == row["label"] for r, row in zip(routes, validation)]
    assert np.mean(correct) == pytest.approx(logged["val_accuracy"], abs=1.5 / len(validation))
    for label in ("arithmetic", "qa"):
        rows = [c for c, row in zip(correct, validation) if row["label"] == label]
        assert np.mean(rows) == pytest.approx(logged[f"val_accuracy/{label}"], abs=1.5 / len(rows))

    class Unused:
        model = "unused"

        async def chat(self, *a, **k):
            raise AssertionError("the reasoning agent answers arithmetic with the calculator alone")

    leader = Leader(router, {"reasoning": ReasoningAgent(Unused()), **{
        name: DirectAgent(Unused()) for name in ("retrieval", "execution", "direct")}})
    text = next(r["text"] for r, route in zip(validation, routes)
                if route.intent == "arithmetic" and arithmetic_expression(r["text"]))
    done = leader.handle_sync(text)
    assert (done.route.intent, done.route.agent) == ("arithmetic", "reasoning")
    expression = arithmetic_expression(text)
    assert done.result.answer == f"{expression} = {qj_calc(expression)}"
    assert [s.kind for s in done.result.steps] == ["route", "tool", "stop", "critique"]
