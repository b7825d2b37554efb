"""`quark tokenizer train`: a new SentencePiece model from a mixture, fertility per source, special tokens via seqio."""

import json
import os
import subprocess
import sys

import pytest
import seqio

from quark_jax.data import sources, tasks, tokenizer, tokenizer_training
from tests.conftest import REPO, run_quark

CODE = 'def f(x):\n\tif x:\n        return {"a": [1, 2]}  # ok\n'


@pytest.fixture(scope="module")
def small_mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    (root / "code").mkdir()
    for i, doc in enumerate(vocab_corpus()):
        (root / "code" / f"m{i}.py").write_text(doc)
    (root / "chat.jsonl").write_text("".join(
        json.dumps({"text": f"<|user|>What is {i} plus {i}?<|end|>\n<|assistant|>It is {2 * i}.<|end|>\n"}) + "\n"
        for i in range(300)))
    sources.register_source_task("tok.code", sources.CodeRepoSource(root / "code", validation_fraction=0.2))
    sources.register_source_task("tok.chat", sources.JsonlSource(str(root / "chat.jsonl"), kind="chat",
                                                                 validation_fraction=0.2))
    tasks.register_mixture("tok", {"tok.code": 0.7, "tok.chat": 0.3})
    return root


def vocab_corpus():
    from quark_jax.data import corpus

    return corpus.stdlib_documents("stdlib_code", "validation")


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_train_writes_new_model_with_specials_and_fertility(small_mixture, tmp_path, model_type):
    committed = tokenizer.DEFAULT_SPM_PATH.read_bytes()
    report = tokenizer_training.train("tok", tmp_path / "tok_1k", vocab_size=1024, model_type=model_type, max_chars=400_000)
    assert report["model"] == f"{tmp_path / 'tok_1k'}.model" and report["vocab_size"] == 1024
    assert tokenizer.DEFAULT_SPM_PATH.read_bytes() == committed  # the shipped model is never overwritten
    fert = report["fertility"]
    assert set(fert) == {"tok.code", "tok.chat"}
    for stats in fert.values():
        assert stats["documents"] > 0 and 0 < stats["tokens_per_char"] < 1 and stats["tokens_per_word"] > 0

    # Through seqio: same reserved ids, special tokens as single pieces, lossless round trip on code.
    v = tokenizer.get_vocabulary(report["model"])
    assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
    specials = tokenizer.special_tokens(report["model"])
    assert specials == tokenizer.special_tokens()  # same markers, same ids as the committed model
    chat = "<|system|>be brief<|end|><|user|>hi<|end|><|assistant|><|tool_call|>{}<|tool_result|>ok<|end|>"
    ids = v.encode(chat)
    for name in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool_call|>", "<|tool_result|>"):
        assert specials[name] in ids
    assert v.decode(ids) == chat
    assert v.decode(v.encode(CODE)) == CODE and tokenizer.UNK_ID not in v.encode("λ → 日本語 🙂")
    tf_ids = v.encode_tf(seqio.utils.tf.constant(chat)).numpy().tolist()
    assert tf_ids == ids and v.decode_tf(seqio.utils.tf.constant(ids)).numpy().decode() == chat


def test_cli_rejects_unknown_mixture(tmp_path):
    result = run_quark("tokenizer", "train", "--mixture", "nope", "--output", str(tmp_path / "t"))
    assert result.returncode == 2 and "quark data list" in result.stderr


# The committed model was trained on this interpreter's stdlib; another patch version has another corpus.
@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7), reason="the committed model was trained on Python 3.11.7")
def test_train_tokenizer_script_rebuilds_the_committed_model(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tokenizers", "train_tokenizer.py"),
                             "--output", str(tmp_path / "rebuilt")], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "rebuilt.model").read_bytes() == tokenizer.DEFAULT_SPM_PATH.read_bytes()
    assert (tmp_path / "rebuilt.vocab").read_bytes() == tokenizer.DEFAULT_SPM_PATH.with_suffix(".vocab").read_bytes()
