"""The committed SentencePiece tokenizer, through seqio."""

import pytest

from quark_jax.data import tokenizer

CODE = 'def f(x):\n\tif x:\n        return {"a": [1, 2]}  # ok\n\n\nclass A:  pass\n'


@pytest.fixture(scope="module")
def vocabulary():
    return tokenizer.get_vocabulary()


@pytest.mark.parametrize(
    "text",
    [CODE, "Unicode survives byte fallback: λ → ∑ ☃ 日本語 🙂", "  leading and trailing spaces  ", "a\r\nb"],
)
def test_round_trip_is_lossless(vocabulary, text):
    ids = vocabulary.encode(text)
    assert tokenizer.UNK_ID not in ids
    assert vocabulary.decode(ids) == text


def test_reserved_ids_and_special_tokens(vocabulary):
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (tokenizer.PAD_ID, tokenizer.EOS_ID, tokenizer.UNK_ID)
    assert vocabulary.vocab_size == 4096
    specials = tokenizer.special_tokens()
    for name in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool_call|>", "<|tool_result|>"):
        assert name in specials
    # Special markers encode as one piece each, inside ordinary text.
    ids = vocabulary.encode("<|user|>hi<|end|>")
    assert ids[0] == specials["<|user|>"] and ids[-1] == specials["<|end|>"]
    assert vocabulary.decode(ids) == "<|user|>hi<|end|>"


def test_tokenizer_compresses_code(vocabulary):
    # A tokenizer trained on the stdlib should need well under one token per 2 characters of Python.
    assert len(vocabulary.encode(CODE * 4)) < len(CODE * 4) / 2


def test_missing_model_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_tokenizer.py"):
        tokenizer.get_vocabulary(tmp_path / "nope.model")


def test_committed_model_has_the_one_id_layout():
    specials = tokenizer.special_tokens()
    first = tokenizer.BOS_ID + 1
    assert specials == {name: first + i for i, name in enumerate(tokenizer.USER_DEFINED_TOKENS)}
    processor = tokenizer.sentencepiece_processor()
    assert [processor.id_to_piece(i) for i in range(first)] == [
        tokenizer.PAD_PIECE, tokenizer.EOS_PIECE, tokenizer.UNK_PIECE, tokenizer.BOS_PIECE]
    from quark_jax.data import chat

    assert set(chat.ROLE_MARKERS.values()) | {chat.END} <= set(tokenizer.CHAT_TOKENS)
