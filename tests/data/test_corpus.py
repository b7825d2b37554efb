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


def test_the_parsed_library_is_cached_by_fingerprint_and_a_broken_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    """Every `quark train` process reads the library: the second reads one JSON file instead of parsing it. The
    result is the same, a corrupted cache file is ignored with a warning and rewritten, and a library file
    whose size or time changes is a new fingerprint."""
    monkeypatch.setenv(corpus.CACHE_ENV, str(tmp_path))
    corpus._corpus.cache_clear()
    try:
        parsed = corpus._corpus()
        [cached_file] = (tmp_path / "stdlib_corpus").iterdir()
        corpus._corpus.cache_clear()
        assert corpus._corpus() == parsed
        cached_file.write_text('{"files": [["os.py", ')  # a process killed while writing it (not atomic)
        corpus._corpus.cache_clear()
        assert corpus._corpus() == parsed
        assert "ignoring an unreadable corpus cache" in caplog.text
        assert cached_file.read_text().startswith('{"files": [[')
        assert len(cached_file.read_text()) > 1_000_000
    finally:
        corpus._corpus.cache_clear()
    root = corpus.stdlib_root()
    paths = corpus._candidates(root)
    moved = [p for p in paths if (root / p).is_file()][:1]
    assert corpus._fingerprint(root, paths) != corpus._fingerprint(root, [p for p in paths if p not in moved])
