"""The index directory: search modes, add/delete without a rebuild, reopening, refusing a foreign embedder,
corrupted directories, atomic writes, and the Qdrant backend against exact search."""

import json
import os

import numpy as np
import pytest
from index_test_embedder import HashedBowEmbedder

from quark_jax.retrieval import dense, index_files
from quark_jax.retrieval.index import EmbedderMismatchError, Index, IndexFormatError
from quark_jax.retrieval.types import Passage

TOPICS = ["json decoder parses documents", "path join separator directory", "counter counts hashable objects",
          "regular expression raw string", "socket connect network address", "thread lock concurrent queue",
          "zip archive compress file", "datetime timezone offset clock"]


def _passages(n, prefix="p", seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        filler = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega", "sigma"], size=4))
        out.append(Passage(f"{prefix}{i}", f"{topic} {filler} item{i}", {"n": i, "topic": topic.split()[0]}))
    return out


@pytest.fixture
def embedder():
    return HashedBowEmbedder(dim=32)


def _ids(hits):
    return [h.id for h in hits]


def test_modes_find_the_right_topic_and_reopen_identically(tmp_path, embedder):
    index = Index.create(str(tmp_path / "idx"), embedder=embedder, hnsw=True)
    index.add(_passages(80))
    assert len(index) == 80 and index.get("p3").metadata == {"n": 3, "topic": "regular"}
    queries = ["json decoder", "thread lock queue", "item17"]
    before = {mode: index.search_batch(queries, k=5, mode=mode) for mode in ("lexical", "dense", "hybrid")}
    assert all(h.metadata["topic"] == "json" for h in before["lexical"][0])
    assert all(h.metadata["topic"] == "thread" for h in before["dense"][1])
    assert before["lexical"][2][0].id == "p17" and before["hybrid"][2][0].id == "p17"
    # dense through HNSW equals exact on this small index; the default mode of a two-part index is hybrid
    assert _ids(index.search("json decoder", 5, mode="dense")) == _ids(index.search("json decoder", 5, mode="dense", exact=True))
    assert _ids(index.search("json decoder", 5)) == _ids(before["hybrid"][0])

    reopened = Index.open(str(tmp_path / "idx"), embedder=HashedBowEmbedder(dim=32))
    for mode, results in before.items():
        again = reopened.search_batch(queries, k=5, mode=mode)
        assert [[(h.id, h.text, h.metadata) for h in r] for r in again] == [[(h.id, h.text, h.metadata) for h in r] for r in results]
        np.testing.assert_allclose([h.score for r in again for h in r], [h.score for r in results for h in r], rtol=1e-6)
    # without an embedder only the lexical part can answer
    lexical_only = Index.open(str(tmp_path / "idx"))
    assert _ids(lexical_only.search("json decoder", 5, mode="lexical")) == _ids(before["lexical"][0])
    with pytest.raises(ValueError, match="needs the embedder 'test-hashed-bow-32-512-seed0'"):
        lexical_only.search("json decoder", 5, mode="dense")


def test_add_and_delete_without_rebuild(tmp_path, embedder):
    path = str(tmp_path / "idx")
    index = Index.create(path, embedder=embedder, hnsw=True)
    index.add(_passages(60))
    vectors_before = index.manifest["files"]["vectors"]["bytes"]
    untouched_query = "datetime timezone clock"
    untouched = index.search(untouched_query, k=5, mode="dense")

    index.add([Passage("new1", "quantum entanglement photon experiment", {"n": -1})])
    assert index.manifest["files"]["vectors"]["bytes"] == vectors_before + 32 * 4  # appended one float32 row
    assert index.manifest["counts"] == {"rows": 61, "deleted": 0, "live": 61}
    for mode in ("lexical", "dense", "hybrid"):
        assert index.search("quantum photon", k=3, mode=mode)[0].id == "new1"
    assert _ids(index.search(untouched_query, k=5, mode="dense")) == _ids(untouched)

    hnsw_file = index.manifest["files"]["hnsw"]["name"]
    json_ids = [h.id for h in index.search("json decoder", k=20, mode="lexical")]
    gone = json_ids[:3]
    index.delete(gone)
    assert index.manifest["files"]["hnsw"]["name"] == hnsw_file  # a delete is a tombstone: HNSW not rewritten
    assert index.manifest["counts"] == {"rows": 61, "deleted": 3, "live": 58}
    for mode in ("lexical", "dense", "hybrid"):
        for exact in (False, True):
            found = _ids(index.search("json decoder", k=61, mode=mode, exact=exact))
            assert not set(gone) & set(found)
    assert all(g not in index for g in gone) and len(index) == 58
    with pytest.raises(KeyError, match=f"no passage '{gone[0]}'"):
        index.get(gone[0])
    with pytest.raises(KeyError, match="no passage 'missing'.*nothing was deleted"):
        index.delete(["p1", "missing"])
    assert "p1" in index
    with pytest.raises(ValueError, match="passage id 'p1' is already in index"):
        index.add([Passage("p1", "duplicate")])
    with pytest.raises(ValueError, match="'twice' is already.*twice in this batch"):
        index.add([Passage("twice", "a"), Passage("twice", "b")])

    # an id can come back after a delete; reopening agrees with memory
    index.add([Passage(gone[0], "json decoder revived", {})])
    assert index.get(gone[0]).text == "json decoder revived"
    reopened = Index.open(path, embedder=embedder)
    assert reopened.ids() == index.ids()
    assert _ids(reopened.search("json decoder", 10)) == _ids(index.search("json decoder", 10))


def test_compaction_drops_dead_rows_and_keeps_results(tmp_path, embedder):
    index = Index.create(str(tmp_path / "idx"), embedder=embedder, hnsw=True, compact_fraction=0.25)
    index.add(_passages(40))
    index.delete([f"p{i}" for i in range(8)])  # 8/40 = 0.2: tombstones only
    assert index.manifest["counts"]["rows"] == 40
    before = {"dense": _ids(index.search("counter counts objects", 10, mode="dense", exact=True))}
    index.delete([f"p{i}" for i in range(8, 12)])  # 12/40 > 0.25: compacted
    assert index.manifest["counts"] == {"rows": 28, "deleted": 0, "live": 28}
    assert np.load(os.path.join(index.path, index.manifest["files"]["vectors"]["name"])).shape == (28, 32)
    after = {"dense": _ids(index.search("counter counts objects", 10, mode="dense", exact=True))}
    survivors = [i for i in before["dense"] if int(i[1:]) >= 12]  # dense scores do not depend on other rows
    assert survivors and after["dense"][:len(survivors)] == survivors
    # the compacted index answers exactly like one built from scratch on the surviving passages
    fresh = Index.create(str(tmp_path / "fresh"), embedder=embedder, hnsw=True)
    fresh.add([p for p in _passages(40) if int(p.id[1:]) >= 12])
    for m in ("dense", "lexical", "hybrid"):
        got = index.search("counter counts objects", 10, mode=m, exact=True)
        assert [(h.id, round(h.score, 5)) for h in got] == [
            (h.id, round(h.score, 5)) for h in fresh.search("counter counts objects", 10, mode=m, exact=True)]
    assert _ids(index.search("counter counts objects", 5, mode="dense")) == after["dense"][:5]


def test_embedder_identity_mismatch_is_refused_with_both_names(tmp_path, embedder):
    Index.create(str(tmp_path / "idx"), embedder=embedder).add(_passages(5))
    other = HashedBowEmbedder(dim=32, identity="quark-run-7@step200:mean")
    with pytest.raises(EmbedderMismatchError) as e:
        Index.open(str(tmp_path / "idx"), embedder=other)
    message = str(e.value)
    assert "\n" not in message
    assert "'test-hashed-bow-32-512-seed0'" in message and "'quark-run-7@step200:mean'" in message


def test_empty_index_and_bad_input(tmp_path, embedder):
    index = Index.create(str(tmp_path / "idx"), embedder=embedder, hnsw=True)
    assert len(index) == 0 and index.search("anything", k=3) == []
    reopened = Index.open(str(tmp_path / "idx"), embedder=embedder)
    assert reopened.search_batch(["a", "b"], k=3, mode="dense") == [[], []]
    with pytest.raises(ValueError, match="query 1 is empty"):
        reopened.search_batch(["fine", "   "], k=3)
    with pytest.raises(ValueError, match="over the 1048576-byte limit"):
        index.add([Passage("big", "x" * (1 << 20 + 1))])
    with pytest.raises(ValueError, match="metadata is not JSON"):
        index.add([Passage("m", "text", {"f": {1, 2}})])
    with pytest.raises(FileExistsError, match="already exists"):
        Index.create(str(tmp_path / "idx"), embedder=embedder)
    with pytest.raises(ValueError, match="mode='dense' needs the dense part"):
        Index.create(str(tmp_path / "lex"), dense=False).search("x", mode="dense")
    assert len(index) == 0  # nothing was half-added


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_corrupted_directory_gives_one_line_naming_the_file(tmp_path, embedder):
    path = str(tmp_path / "idx")
    Index.create(path, embedder=embedder, hnsw=True).add(_passages(20))
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    passages = os.path.join(path, manifest["files"]["passages"]["name"])
    vectors = os.path.join(path, manifest["files"]["vectors"]["name"])

    content = open(passages, "rb").read()
    with open(passages, "wb") as f:
        f.write(content[:-40])  # truncated
    with pytest.raises(IndexFormatError) as e:
        Index.open(path, embedder=embedder)
    assert passages in _one_line(e) and "truncated" in str(e.value)
    with open(passages, "wb") as f:
        f.write(content.replace(b"json", b"JSON", 1))  # same size, other bytes
    with pytest.raises(IndexFormatError, match="checksum mismatch") as e:
        Index.open(path, embedder=embedder)
    _one_line(e)
    with open(passages, "wb") as f:
        f.write(content)

    os.remove(vectors)
    with pytest.raises(IndexFormatError) as e:
        Index.open(path, embedder=embedder)
    assert vectors in _one_line(e) and "missing" in str(e.value)

    with open(os.path.join(path, "manifest.json"), "w") as f:
        f.write(json.dumps(manifest)[:50])
    with pytest.raises(IndexFormatError) as e:
        Index.open(path)
    assert "manifest.json: not valid JSON" in _one_line(e)
    with pytest.raises(IndexFormatError, match="no such index directory"):
        Index.open(str(tmp_path / "nowhere"))


def test_symlinked_part_is_refused(tmp_path, embedder):
    path = str(tmp_path / "idx")
    index = Index.create(path, embedder=embedder)
    index.add(_passages(4))
    target = os.path.join(path, index.manifest["files"]["passages"]["name"])
    outside = str(tmp_path / "outside.jsonl")
    os.replace(target, outside)
    os.symlink(outside, target)
    with pytest.raises(IndexFormatError, match="is a symbolic link"):
        Index.open(path)


def test_crash_before_manifest_swap_keeps_previous_version(tmp_path, embedder, monkeypatch):
    path = str(tmp_path / "idx")
    index = Index.create(path, embedder=embedder, hnsw=True)
    index.add(_passages(30))
    before = _ids(index.search("socket network", 10))

    def crash(directory, manifest):
        raise OSError("simulated crash before the manifest swap")

    monkeypatch.setattr(index_files, "swap_manifest", crash)
    with pytest.raises(OSError, match="simulated crash"):
        index.add([Passage("late", "socket network address connect late")])
    with pytest.raises(OSError, match="simulated crash"):
        index.delete(["p4", "p12"])
    # the object in memory and the directory both still hold the previous version
    assert "late" not in index and "p4" in index and _ids(index.search("socket network", 10)) == before
    leftovers = set(os.listdir(path)) - index_files.referenced_names(index.manifest) - {"manifest.json"}
    assert leftovers  # the crashed writes left their new files behind ...
    monkeypatch.undo()
    reopened = Index.open(path, embedder=embedder)
    assert len(reopened) == 30 and _ids(reopened.search("socket network", 10)) == before
    assert set(os.listdir(path)) == index_files.referenced_names(reopened.manifest) | {"manifest.json"}  # ... cleaned


def test_qdrant_backend_matches_exact_search(tmp_path):
    embedder = HashedBowEmbedder(dim=24, seed=3)
    passages = _passages(120, seed=2)
    index = Index.create(str(tmp_path / "q"), embedder=embedder, backend="qdrant")
    index.add(passages)
    queries = ["json decoder", "zip compress", "thread queue alpha", "item42 sigma"]
    vectors = embedder.embed([p.text for p in passages])
    exact_rows, _ = dense.exact_search(vectors, embedder.embed(queries, "query"), k=10)
    got = index.search_batch(queries, k=10, mode="dense")
    for hits, rows in zip(got, exact_rows):
        assert _ids(hits) == [passages[r].id for r in rows]
    np.testing.assert_allclose(got[0][0].score, float(vectors[exact_rows[0][0]] @ embedder.embed(queries[:1], "query")[0]), rtol=1e-5)
    index.delete([got[0][0].id])
    assert got[0][0].id not in _ids(index.search("json decoder", 10, mode="dense"))
    index.close()
    reopened = Index.open(str(tmp_path / "q"), embedder=embedder)  # in-memory Qdrant refilled from vectors.npy
    live = np.array([p.id != got[0][0].id for p in passages])
    exact_live, _ = dense.exact_search(vectors, embedder.embed(queries[:1], "query"), k=10, live=live)
    assert _ids(reopened.search("json decoder", 10, mode="dense")) == [passages[r].id for r in exact_live[0]]
    assert reopened.info()["backend"] == "qdrant" and not any(n.startswith("hnsw") for n in os.listdir(reopened.path))
    reopened.close()
