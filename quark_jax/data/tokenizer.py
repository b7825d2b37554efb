"""``quark tokenizer train``: a SentencePiece model trained on a sample of a mixture, with fertility per source.

    quark tokenizer train --mixture quark_demo --output tokenizers/quark_demo_8k --vocab_size 8192

writes ``<output>.model`` and ``<output>.vocab`` (never the committed ``quark_stdlib_4k`` model unless asked to
by name) and prints a JSON report with, per source of the mixture, the *fertility* on its validation split:
tokens per character and tokens per whitespace-separated word.

The settings are those of ``tokenizers/train_tokenizer.py`` (lossless on code: identity normalisation, no
whitespace collapsing, whitespace-only pieces for indentation, byte fallback, split digits; pad=0, eos=1,
unk=2, bos=3) and the same special tokens in the same order (chat roles, tool markers, reserved slots),
read from the committed model so the two never drift. Each task contributes characters in proportion to
its mixture rate, sampled by content hash (deterministic).
"""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import time
from collections.abc import Sequence

from quark_jax.data import vocab

# SentencePiece drops "sentences" longer than max_sentence_length bytes: documents are cut at line ends.
SEGMENT_CHARS = 4_000


def special_tokens_in_order() -> list[str]:
    """The user-defined markers of the committed model, by id (``<|system|>``, ``<|user|>`` ...)."""
    return [name for name, _ in sorted(vocab.special_tokens().items(), key=lambda kv: kv[1])]


def segments(text: str, max_chars: int = SEGMENT_CHARS) -> list[str]:
    """Line-aligned pieces of at most ``max_chars`` (a longer single line is cut hard)."""
    out, current = [], ""
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:
            if current:
                out.append(current)
                current = ""
            out.append(line[:max_chars])
            line = line[max_chars:]
        if len(current) + len(line) > max_chars:
            out.append(current)
            current = ""
        current += line
    if current:
        out.append(current)
    return out


def _keep(segment: str, fraction: float) -> bool:
    digest = hashlib.sha256(segment.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def mixture_documents(name: str, split: str) -> dict[str, tuple[float, list[str]]]:
    """task name -> (rate, documents of ``split``) for a registered mixture or task."""
    import seqio

    from quark_jax.data import build, tasks  # noqa: F401 -- registers the tasks

    if name in seqio.MixtureRegistry.names():
        mix = seqio.MixtureRegistry.get(name)
        members = [(t, mix.get_rate(t)) for t in mix.tasks]
    elif name in seqio.TaskRegistry.names():
        members = [(seqio.TaskRegistry.get(name), 1.0)]
    else:
        raise ValueError(f"unknown mixture or task {name!r}; see `quark data list`")
    return {t.name: (rate, [d["text"] for d in build._iter_documents(t, split)[0]]) for t, rate in members}


def fertility(processor, documents: Sequence[str]) -> dict[str, float]:
    """Tokens per character and per whitespace word of ``documents`` under ``processor``."""
    chars = sum(len(d) for d in documents)
    words = sum(len(d.split()) for d in documents)
    tokens = sum(len(ids) for ids in processor.encode(list(documents))) if documents else 0
    return {"documents": len(documents), "tokens_per_char": round(tokens / max(1, chars), 4),
            "tokens_per_word": round(tokens / max(1, words), 4)}


def train(mixture: str, output: str | pathlib.Path, vocab_size: int = 4096, model_type: str = "bpe",
          max_chars: int = 4_000_000) -> dict:
    """Trains and writes ``output``.model/.vocab from ``mixture``'s train split; returns the report."""
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"--model_type={model_type!r}: choose 'bpe' or 'unigram'")
    output = pathlib.Path(output)
    if output.suffix == ".model":
        output = output.with_suffix("")
    train_docs = mixture_documents(mixture, "train")
    total_rate = sum(rate for rate, _ in train_docs.values()) or 1.0
    text = []
    for task, (rate, docs) in train_docs.items():
        segs = [s for d in docs for s in segments(d)]
        available = sum(len(s) for s in segs)
        if not available:
            continue
        fraction = min(1.0, max_chars * rate / total_rate / available)
        text.extend(s for s in segs if _keep(s, fraction))
    if not text:
        raise ValueError(f"mixture {mixture!r} has no training text to learn a tokenizer from")
    model = io.BytesIO()
    start = time.perf_counter()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=model, model_type=model_type, vocab_size=vocab_size,
        byte_fallback=True, character_coverage=0.9999, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        split_digits=True, max_sentence_length=4 * SEGMENT_CHARS, input_sentence_size=0,
        shuffle_input_sentence=False, num_threads=1, pad_id=vocab.PAD_ID, eos_id=vocab.EOS_ID,
        unk_id=vocab.UNK_ID, bos_id=vocab.BOS_ID, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        bos_piece="<s>", user_defined_symbols=special_tokens_in_order(), minloglevel=2,
    )
    seconds = time.perf_counter() - start
    output.parent.mkdir(parents=True, exist_ok=True)
    proto = model.getvalue()
    pathlib.Path(f"{output}.model").write_bytes(proto)
    processor = spm.SentencePieceProcessor(model_proto=proto)
    pieces = [processor.id_to_piece(i).encode("unicode_escape").decode("ascii") for i in range(processor.get_piece_size())]
    pathlib.Path(f"{output}.vocab").write_text(
        "".join(f"{p}\t{processor.get_score(i)}\n" for i, p in enumerate(pieces)), encoding="utf-8")
    validation = mixture_documents(mixture, "validation")
    return {
        "model": f"{output}.model", "mixture": mixture, "model_type": model_type,
        "vocab_size": processor.get_piece_size(), "train_chars": sum(len(s) for s in text),
        "train_seconds": round(seconds, 1),
        "fertility": {task: fertility(processor, docs) for task, (_, docs) in validation.items()},
    }


def main_report(report: dict) -> str:
    return json.dumps(report, indent=2)
