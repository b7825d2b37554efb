"""Cleaning filters: dedup, language id, quality, toxicity (precision/recall) and PII (recall, no false edits)."""

import dataclasses

import pytest
import seqio
import tensorflow as tf

from quark_jax.data import corpus, filters

PROSE = ("The committee met on Tuesday to discuss the budget for the coming year. Several members argued that "
         "the funds for the library should be increased, and the chair agreed to prepare a proposal with the "
         "new figures before the next meeting.")


def test_exact_dedup_ignores_case_and_spacing():
    d = filters.ExactDeduper()
    assert d.check("Hello   World\n") is None
    assert d.check("hello world") == "exact_duplicate"
    assert d.check("hello world!") is None


def test_near_dedup_finds_edits_and_keeps_distinct_documents():
    d = filters.NearDeduper(threshold=0.7, num_perm=128)
    edited = PROSE.replace("Tuesday", "Wednesday")
    other = corpus.stdlib_documents("stdlib_docstrings", "validation")[0]
    assert d.check(PROSE) is None
    assert d.check(edited) == "near_duplicate"
    assert d.check(other) is None
    with pytest.raises(ValueError, match="near_dup_threshold"):
        filters.NearDeduper(threshold=1.5)


def test_language_id_is_offline_and_configurable():
    assert filters.identify_language(PROSE)[0] == "en"
    french = "Le comité s'est réuni mardi pour discuter du budget de l'année prochaine et de la bibliothèque."
    assert filters.language_filter(french) == "language:fr"
    assert filters.language_filter(french, languages=("en", "fr")) is None
    assert filters.language_filter(french, languages=()) is None


def test_quality_rules():
    q = filters.QualityConfig()
    assert filters.quality_filter(PROSE) is None
    assert filters.quality_filter("too short") == "quality:word_count"
    assert filters.quality_filter("\n".join(["buy the pills and have fun with them"] * 20)) == "quality:duplicate_lines"
    assert filters.quality_filter(" ".join(["#tag the #win and #yes"] * 20)) == "quality:symbol_ratio"
    assert filters.quality_filter(PROSE, config=dataclasses.replace(q, min_words=500)) == "quality:word_count"
    boiler = ["All rights reserved by the company.", "Read the privacy policy and the cookie policy.",
              "Click here to subscribe.", "Terms of use apply to the site."]
    assert filters.quality_filter("\n".join(boiler + [PROSE])) == "quality:boilerplate"
    # Real code passes the code rules; minified code does not.
    assert all(filters.quality_filter(d, "code") is None for d in corpus.stdlib_documents("stdlib_code", "validation"))
    assert filters.quality_filter("x=1;" * 400, "code") == "quality:code_line_length"


def _precision_recall(pairs):
    tp = sum(p and y for p, y in pairs)
    fp = sum(p and not y for p, y in pairs)
    fn = sum(y and not p for p, y in pairs)
    return tp / max(1, tp + fp), tp / max(1, tp + fn)


def test_toxicity_precision_recall_on_held_out_set(capsys):
    test = filters.load_labelled("toxicity_labelled", "test")
    train_texts = {r["text"] for r in filters.load_labelled("toxicity_labelled", "train")}
    assert test and not train_texts & {r["text"] for r in test}
    precision, recall = _precision_recall([(filters.is_toxic(r["text"]), r["label"] == 1) for r in test])
    with capsys.disabled():
        print(f"\ntoxicity held-out ({len(test)} sentences): precision {precision:.3f} recall {recall:.3f}")
    assert precision >= 0.9 and recall >= 0.8
    # Technical prose with the lexicon's words is left alone.
    assert filters.toxicity_filter("Kill the worker process and collect the garbage.\nThe child dies first.") is None
    assert filters.toxicity_filter("Nice work.\nYou are a worthless idiot.") == "toxicity"


PII_POSITIVES = [
    ("Write to jane.doe@example.org for details.", "<EMAIL>"),
    ("Contact: bob_smith+news@mail.co.uk", "<EMAIL>"),
    ("Call me at (415) 555-2671 tomorrow.", "<PHONE>"),
    ("Phone: +44 20 7946 0958", "<PHONE>"),
    ("my number is 415-555-2671", "<PHONE>"),
    ("Server at 8.8.4.4 is down", "<IP_ADDRESS>"),
    ("ssh admin@10.20.30.40", "<IP_ADDRESS>"),
    ("Connect to fe80:0000:0000:0000:0202:b3ff:fe1e:8329 now", "<IP_ADDRESS>"),
    ("Card: 4111 1111 1111 1111 exp 12/28", "<CREDIT_CARD>"),
    ("cc=5500-0000-0000-0004", "<CREDIT_CARD>"),
    ("Amex 378282246310005 on file", "<CREDIT_CARD>"),
    ("SSN 123-45-6789 on the form", "<NATIONAL_ID>"),
    ("NI number AB 12 34 56 C", "<NATIONAL_ID>"),
    ("aws_key = 'AKIAIOSFODNN7EXAMPLE'", "<SECRET>"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789AB", "<SECRET>"),
    ("OPENAI_API_KEY=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t", "<SECRET>"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "<SECRET>"),
    ("password = 'Xk9#mQ2$vL7pR4'", "<SECRET>"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----", "<SECRET>"),
    ("blob Zx8Qm2Lp9Rt4Vw7Yk3Nc6Bf1Hj5Dg0Sa2Ee4Uu", "<SECRET>"),
]
PII_NEGATIVES = [
    "The meeting is at 10:30 on 2024-05-17, room 101.",
    "Version 3.11.7 was released; see PEP 8 and RFC 2822.",
    "x = compute(123, 456, 789)  # three numbers",
    "@property\ndef name(self):\n    return self._name",
    "Listen on 127.0.0.1:8080 or 0.0.0.0 with netmask 255.255.255.0.",
    "sha = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'",
    "The total was 1,234,567 dollars in 1999.",
    "password = get_password()",
    "ISBN 978-0-306-40615-7",
]


def test_pii_recall_on_labelled_set_and_no_false_edits(capsys):
    hits = 0
    for text, placeholder in PII_POSITIVES:
        scrubbed, counts = filters.scrub_pii(text)
        if counts[placeholder] >= 1 and placeholder in scrubbed:
            hits += 1
        else:
            print("missed", text, "->", scrubbed)
    untouched = sum(filters.scrub_pii(t)[0] == t for t in PII_NEGATIVES)
    # Ordinary code: the validation split of the stdlib (its only hits are a real e-mail address and an IPv6 example).
    docs = [d for d in corpus.stdlib_documents("stdlib_code", "validation")]
    changed_lines = 0
    total_lines = sum(d.count("\n") for d in docs)
    for d in docs:
        s, _ = filters.scrub_pii(d)
        changed_lines += sum(a != b for a, b in zip(d.splitlines(), s.splitlines()))
    with capsys.disabled():
        print(f"\nPII labelled set: recall {hits}/{len(PII_POSITIVES)}; negatives untouched "
              f"{untouched}/{len(PII_NEGATIVES)}; stdlib validation code lines changed {changed_lines}/{total_lines}")
    assert hits == len(PII_POSITIVES)
    assert untouched == len(PII_NEGATIVES)
    assert changed_lines / total_lines < 0.002


def test_filters_as_seqio_preprocessors():
    ds = tf.data.Dataset.from_tensor_slices({"text": ["too short", PROSE, "mail me: a.b@example.com please"]})
    kept = filters.seqio_filter(filters.quality_filter)(ds)
    assert [x["text"].decode() for x in kept.as_numpy_iterator()] == [PROSE]
    scrubbed = filters.seqio_map(lambda t: filters.scrub_pii(t)[0])(ds)
    assert list(scrubbed.as_numpy_iterator())[2]["text"].decode() == "mail me: <EMAIL> please"
    assert isinstance(filters.cleaning_config(), filters.CleaningConfig)
