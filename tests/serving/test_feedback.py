"""Feedback bodies, the feedback file, and the preference pairs made of it — loaded back through the DPO data
loader (quark_jax.data.preferences) to show `quark train --gin_file=configs/runs/dpo.gin` can read them."""

from __future__ import annotations

import json
import threading

import pytest

from quark_jax.serving import feedback
from quark_jax.serving.feedback import FeedbackStore, feedback_entry, preference_pairs, validate_feedback


@pytest.mark.parametrize("body, field", [
    ({"rating": 1}, "'id'"),
    ({"id": "", "rating": 1}, "'id'"),
    ({"id": "a", "rating": 2}, "'rating'"),
    ({"id": "a", "rating": True}, "'rating'"),
    ({"id": "a", "rating": "meh"}, "'rating'"),
    ({"id": "a", "rating": 1, "choice": -1}, "'choice'"),
    ({"id": "a", "rating": 1, "choice": "0"}, "'choice'"),
    ({"id": "a", "preferred": -1}, "'preferred'"),
    ({"id": "a", "preferred": 1.0}, "'preferred'"),
    ({"id": "a", "preferred": 1, "choice": 0}, "'choice'"),
    ({"id": "a"}, "'rating'"),
    ({"id": "a", "rating": 1, "preferred": 0}, "'preferred'"),
    ({"id": "a", "rating": 1, "stars": 5}, "'stars'"),
])
def test_validate_feedback_names_the_bad_field(body, field):
    with pytest.raises(ValueError, match=field):
        validate_feedback(body)


def test_validate_feedback_normalises():
    assert validate_feedback({"id": "a", "rating": "up"}) == {"id": "a", "rating": 1, "choice": 0}
    assert validate_feedback({"id": "a", "rating": -1, "choice": 2}) == {"id": "a", "rating": -1, "choice": 2}
    assert validate_feedback({"id": "a", "rating": "down"})["rating"] == -1
    assert validate_feedback({"id": "a", "preferred": 1}) == {"id": "a", "preferred": 1}
    with pytest.raises(ValueError, match="JSON object"):
        validate_feedback(["a", 1])


def test_feedback_entry_checks_the_choice():
    entry = feedback_entry({"id": "a", "rating": 1, "choice": 1}, "Hi?", ["x", "y"], system="Be brief.", now=5.0)
    assert entry == {"time": 5.0, "id": "a", "rating": 1, "choice": 1, "prompt": "Hi?", "system": "Be brief.",
                     "choices": ["x", "y"]}
    with pytest.raises(ValueError, match="'choice' is 2 but request a has 2"):
        feedback_entry({"id": "a", "rating": 1, "choice": 2}, "Hi?", ["x", "y"])
    with pytest.raises(ValueError, match="'preferred' needs a request with 2 or more"):
        feedback_entry({"id": "a", "preferred": 0}, "Hi?", ["x"])


def rated(i, prompt, text, rating, system=None):
    return feedback_entry({"id": f"r{i}", "rating": rating, "choice": 0}, prompt, [text], system, now=float(i))


def test_pairs_from_preferred_and_ratings():
    entries = [
        feedback_entry({"id": "p1", "preferred": 1}, "What is 2 + 2?", ["5", "4", "22"], now=0.0),
        rated(1, "Capital of France?", "Paris.", 1),
        rated(2, "Capital of France?", "Lyon.", -1),
        rated(3, "Capital of France?", "It is Paris.", 1),
        rated(4, "Capital of France?", "Paris.", 1),              # same text again: no new pair
        rated(5, "Capital of France?", "Paris.", -1, "Be rude."),  # another system prompt: another pool
        rated(6, "Only praised?", "Yes.", 1),                       # no thumbs-down answer: no pair
        rated(7, "Same text?", "A.", 1), rated(8, "Same text?", "A.", -1),  # chosen == rejected: dropped
        feedback_entry({"id": "p1", "preferred": 1}, "What is 2 + 2?", ["5", "4", "22"], now=9.0),  # duplicate
    ]
    pairs = preference_pairs(entries)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("What is 2 + 2?", "4", "5"), ("What is 2 + 2?", "4", "22"),
        ("Capital of France?", "Paris.", "Lyon."), ("Capital of France?", "It is Paris.", "Lyon."),
    ]
    assert all("system" not in p for p in pairs)


def test_a_changed_rating_counts_once():
    entries = [rated(1, "Q?", "good", 1), rated(2, "Q?", "bad", 1), rated(2, "Q?", "bad", -1)]
    assert [(p["chosen"], p["rejected"]) for p in preference_pairs(entries)] == [("good", "bad")]


def test_store_appends_from_threads(tmp_path):
    store = FeedbackStore(str(tmp_path / "deep" / "feedback.jsonl"))
    threads = [threading.Thread(target=lambda k=k: [store.append(rated(10 * k + i, "Q?", "a" * 500, 1))
                                                    for i in range(10)]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = open(store.path, encoding="utf-8").read().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(f"r{i}" for i in range(40))


def write_feedback(tmp_path, entries, torn=True):
    store = FeedbackStore(str(tmp_path / "feedback.jsonl"))
    for entry in entries:
        store.append(entry)
    if torn:
        with open(store.path, "a", encoding="utf-8") as f:
            f.write('{"time": 1.0, "id": "to\n')
    return store.path


def test_written_pairs_load_through_the_dpo_loader(tmp_path, capsys):
    from quark_jax.data import preferences

    entries = []
    for q in range(12):
        prompt = f"What is {q} + {q}?"
        entries.append(feedback_entry({"id": f"p{q}", "preferred": 0}, prompt, [f"{2 * q}.", f"{q}{q}.", "?"],
                                      system="Answer with a number." if q % 2 else None, now=float(q)))
        entries.append(rated(100 + q, prompt, f"It is {2 * q}.", 1))
        entries.append(rated(200 + q, prompt, f"It is {3 * q + 1}.", -1))
    path = write_feedback(tmp_path, entries)
    out = tmp_path / "pairs"
    assert feedback.feedback_to_pairs_main(path, str(out), validation_fraction=0.25, seed=0) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    assert printed["pairs"] == 12 * 3 and printed["skipped_lines"] == 1
    assert printed["train"] + printed["validation"] == 36 and printed["validation"] > 0

    loaded = 0
    for split in feedback.SPLITS:
        records = preferences.read_pairs(preferences.split_path(str(out), split))
        assert len(records) == printed[split]
        tokenized = preferences.tokenized_pairs(preferences.split_path(str(out), split), 64)
        assert tokenized["input_tokens"].shape == (printed[split], 2, 64)
        batches = preferences.pair_batches(tokenized, batch_size=4, seed=0, shuffle=False, repeat=False)
        loaded += int(sum(batch["valid"].sum() for batch in batches))
    assert loaded == 36
    train_prompts = {r["prompt"] for r in preferences.read_pairs(str(out / "train.jsonl"))}
    validation_prompts = {r["prompt"] for r in preferences.read_pairs(str(out / "validation.jsonl"))}
    assert not train_prompts & validation_prompts
    assert any(r.get("system") == "Answer with a number." for r in preferences.read_pairs(str(out / "train.jsonl")))


def test_split_never_leaves_validation_empty_with_two_prompts():
    pairs = [{"prompt": p, "chosen": "a", "rejected": "b"} for p in ("one", "two")]
    for seed in range(5):
        splits = feedback.split_pairs(pairs, 0.01, seed)
        assert len(splits["train"]) == len(splits["validation"]) == 1
        splits = feedback.split_pairs(pairs, 0.99, seed)
        assert len(splits["train"]) == len(splits["validation"]) == 1
    assert feedback.split_pairs(pairs[:1], 0.5)["validation"] == []
    with pytest.raises(ValueError, match="validation_fraction"):
        feedback.split_pairs(pairs, 1.0)


def test_no_pairs_says_why(tmp_path):
    path = write_feedback(tmp_path, [rated(1, "Q?", "a", 1), rated(2, "Q?", "b", 1)])
    with pytest.raises(ValueError, match="no prompt has both a thumbs-up and a thumbs-down answer"):
        feedback.feedback_to_pairs_main(path, str(tmp_path / "out"))
    with pytest.raises(ValueError, match="no feedback file"):
        feedback.feedback_to_pairs_main(str(tmp_path / "missing.jsonl"), str(tmp_path / "out"))
