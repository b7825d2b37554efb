"""One train/validation rule: the stdlib corpus and local sources split the same key the same way."""

import hashlib

import pytest

from quark_jax.data import corpus, sources, splits


def _corpus_rule(key: str) -> str:
    # The rule the committed tokenizer and the README's trained numbers were produced with: 300 of 10,000 buckets.
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 10_000
    return "validation" if bucket < 300 else "train"


def test_stdlib_split_is_unchanged():
    paths = [f.relpath for s in splits.SPLITS for f in corpus.stdlib_files(s)]
    assert all(splits.split_of(p) == _corpus_rule(p) for p in paths)
    assert {f.relpath for f in corpus.stdlib_files("validation")} == {p for p in paths if _corpus_rule(p) == "validation"}


def test_a_source_splits_like_the_corpus(tmp_path):
    """A code repository holding stdlib paths puts each file in the split the corpus gives it."""
    def plain(relpath):  # CodeRepoSource skips vendored-looking directories such as the stdlib's venv/
        return not set(relpath.split("/")[:-1]) & sources.VENDORED_DIRS

    validation = [f.relpath for f in corpus.stdlib_files("validation") if plain(f.relpath)]
    train = [f.relpath for f in corpus.stdlib_files("train") if plain(f.relpath)][:150]
    for relpath in validation + train:
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).write_text(f"x = {relpath!r}\n")
    source = sources.CodeRepoSource(tmp_path, extensions=(".py",))
    assert {d["id"] for d in source.documents("validation")} == set(validation)
    assert {d["id"] for d in source.documents("train")} == set(train)


@pytest.mark.parametrize("fraction", [0.0, 0.2, 1.0])
def test_fraction_bounds(fraction):
    keys = [f"doc/{i}" for i in range(500)]
    share = sum(splits.split_of(k, fraction) == "validation" for k in keys) / len(keys)
    assert abs(share - fraction) < 0.06
    with pytest.raises(ValueError, match="must be in"):
        splits.split_of("x", 1.5)
