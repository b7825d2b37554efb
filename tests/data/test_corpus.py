"""The standard-library corpus: deterministic, disjoint splits of real code and docstrings."""

from quark_jax.data import corpus


def test_splits_are_deterministic_and_disjoint():
    train = corpus.stdlib_files("train")
    validation = corpus.stdlib_files("validation")
    assert len(train) > 10 * len(validation) > 0
    train_paths = {f.relpath for f in train}
    validation_paths = {f.relpath for f in validation}
    assert not train_paths & validation_paths
    # The split is a pure function of the path, so it is the same on every machine and every call.
    assert all(corpus.split_of(p) == "validation" for p in validation_paths)
    assert all(corpus.split_of(p) == "train" for p in list(train_paths)[:200])


def test_documents_are_real_python_and_docstrings():
    code = corpus.stdlib_documents("stdlib_code", "validation")
    docs = corpus.stdlib_documents("stdlib_docstrings", "validation")
    assert code and docs
    assert sum("def " in d for d in code) > len(code) // 2
    assert all(d.strip() for d in docs)
    assert corpus.stdlib_documents("stdlib_code", "validation") == code  # same order every call
    stats = corpus.corpus_stats()
    assert stats["stdlib_code/train/documents"] > stats["stdlib_code/validation/documents"] > 0
    assert stats["stdlib_docstrings/train/characters"] > 0
