"""`quark data refresh`: new versions hold only documents never kept before (exactly or nearly), the seen index
persists across refreshes, and a version's content hash is stable and matches its shards."""

import json

import numpy as np
import pytest

from quark_jax.data import refresh, sources
from quark_jax.data.seen_index import SeenIndex

TOPICS = ["augassign", "class", "context-managers", "dict", "exceptions", "for", "global", "id-classes"]


def topic(name: str) -> str:
    from pydoc_data.topics import topics

    return topics[name]


def register(directory, name="refresh_docs") -> str:
    # A new source object each time: sources cache what they read.
    return sources.source_mixture(name, {"docs": sources.TextFileSource(patterns=[f"{directory}/*.txt"])})


def version_docs(version_dir) -> dict[str, str]:
    """{id: text} of every shard of a version, read with TensorFlow directly."""
    import tensorflow as tf

    out = {}
    for path in sorted(version_dir.rglob("*.tfrecord-*")):
        for raw in tf.data.TFRecordDataset(str(path)):
            ex = tf.train.Example.FromString(raw.numpy())
            f = ex.features.feature
            out[f["id"].bytes_list.value[0].decode()] = f["text"].bytes_list.value[0].decode()
    return out


def counts(report) -> dict:
    return report["totals"]


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refresh")
    docs, root = tmp / "docs", tmp / "root"
    docs.mkdir()
    for name in TOPICS[:5]:
        (docs / f"{name}.txt").write_text(topic(name))
    first = refresh.refresh(register(docs), root, progress=False, num_shards=2)

    # Second crawl: the old files again, an exact copy (other case and spacing), a one-word edit, two new topics.
    (docs / "copy_of_class.txt").write_text("  " + topic("class").upper().replace(" ", "   ") + "\n")
    words = topic("dict").split(" ")
    words[len(words) // 2] = "EDITED"
    (docs / "edited_dict.txt").write_text(" ".join(words))
    for name in TOPICS[5:7]:
        (docs / f"{name}.txt").write_text(topic(name))
    second = refresh.refresh(register(docs), root, progress=False, num_shards=2)

    # Third crawl: nothing new but another copy of a second-version document (the index came back from disk).
    (docs / "copy_of_for.txt").write_text(topic("for") + "\n\n")
    third = refresh.refresh(register(docs), root, progress=False, num_shards=2)
    return {"docs": docs, "root": root, "reports": [first, second, third]}


def test_refresh_keeps_only_unseen_documents_across_refreshes(refreshed):
    root, docs = refreshed["root"], refreshed["docs"]
    first, second, third = refreshed["reports"]
    assert [p.name for p in refresh.versions(root)] == ["v0001", "v0002", "v0003"]
    assert set(version_docs(root / "v0001")) == {str(docs / f"{n}.txt") for n in TOPICS[:5]}
    assert counts(first)["output_documents"] == 5

    # v2: only the two new topics; the five old files and the exact copy are exact duplicates, the edit is near.
    assert set(version_docs(root / "v0002")) == {str(docs / f"{n}.txt") for n in TOPICS[5:7]}
    assert counts(second)["removed/exact_duplicate"] == 6
    assert counts(second)["removed/near_duplicate"] == 1
    examples = [e["id"] for t in second["tasks"].values() for s in t["splits"].values()
                for e in s["removed_examples"].get("near_duplicate", [])]
    assert examples == [str(docs / "edited_dict.txt")]

    # v3: everything was seen in v1 or v2, which only the index loaded from v0002/seen.npz knows.
    assert counts(third)["output_documents"] == 0 and version_docs(root / "v0003") == {}
    assert counts(third)["removed/exact_duplicate"] == 9 and counts(third)["removed/near_duplicate"] == 1
    assert (third["seen_documents"], second["seen_documents"], first["seen_documents"]) == (7, 7, 5)


def test_versions_record_lineage_and_a_stable_content_hash(refreshed, tmp_path):
    root, docs = refreshed["root"], refreshed["docs"]
    manifests = [refresh.read_manifest(v) for v in refresh.versions(root)]
    assert [m["parent"] for m in manifests] == [None, "v0001", "v0002"]
    assert [m["name"] for m in manifests] == ["refresh_docs_clean_v1", "refresh_docs_clean_v2", "refresh_docs_clean_v3"]
    assert [p.name for p in refresh.lineage(root / "v0003")] == ["v0003", "v0002", "v0001"]
    for version, manifest in zip(refresh.versions(root), manifests):
        assert manifest["content_hash"] == refresh.content_hash(version)  # recomputed from the shards on disk
    assert len({m["content_hash"] for m in manifests}) == 3
    data_gin = (root / "v0002" / "data.gin").read_text()
    assert f"data_dir = {str(root / 'v0002')!r}" in data_gin and ".v0002-" not in data_gin

    # The same five documents refreshed into another root give v1's hash (the shards are byte-identical).
    same = sources.source_mixture("refresh_docs", {"docs": sources.TextFileSource(
        patterns=[str(docs / f"{n}.txt") for n in TOPICS[:5]])})
    again = refresh.refresh(same, tmp_path / "other", name="refresh_docs_clean", progress=False, num_shards=2)
    assert again["content_hash"] == manifests[0]["content_hash"]
    assert refresh.read_manifest(tmp_path / "other" / "v0001")["name"] == "refresh_docs_clean_v1"


def test_seen_index_round_trips_without_pickle(tmp_path):
    index = SeenIndex(num_perm=32)
    index.add(topic("class"), "a")
    index.add(topic("for"), "b")
    index.save(tmp_path / "seen.npz")
    with np.load(tmp_path / "seen.npz", allow_pickle=False) as data:
        assert data["signatures"].shape == (2, 32) and data["ids"].tolist() == ["a", "b"]
        assert json.loads(str(data["settings"]))["num_perm"] == 32
    loaded = SeenIndex.load(tmp_path / "seen.npz")
    assert loaded.exact_duplicate(topic("class").upper()) and not loaded.exact_duplicate(topic("dict"))
    assert loaded.near_duplicate(topic("for").replace("loop", "LOOP", 1) + " extra")
    assert not loaded.near_duplicate(topic("dict"))
    with pytest.raises(ValueError, match=r"built with num_perm=32, not num_perm=64; bind quark_jax.data.CleaningConfig"):
        SeenIndex.load(tmp_path / "seen.npz", expected={"num_perm": 64})


def test_replay_mixture_mixes_the_new_version_with_its_ancestors(refreshed):
    import seqio

    from quark_jax.data.replay import replay_mixture

    root = refreshed["root"]
    name = replay_mixture(str(root), replay_fraction=0.3, version="v0002")
    mixture = seqio.get_mixture_or_task(name)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert name == "refresh_docs_clean_v2_replay300"
    assert rates == {"refresh_docs_clean_v2.refresh_docs.docs": 0.7, "refresh_docs_clean_v1.refresh_docs.docs": 0.3}
    alone = seqio.get_mixture_or_task(replay_mixture(str(root), replay_fraction=0.0, version="v0002"))
    assert [t.name for t in alone.tasks] == ["refresh_docs_clean_v2.refresh_docs.docs"]
    # v0003 kept nothing (every document had been seen): there is nothing new to train on.
    with pytest.raises(ValueError, match=r"v0003 holds no documents to train on"):
        replay_mixture(str(root), replay_fraction=0.1)
    with pytest.raises(ValueError, match=r"replay_fraction=0.2 but v0001 has no older version with documents"):
        replay_mixture(str(root), replay_fraction=0.2, version="v0001")


def test_cli_refresh_prints_the_version_and_refuses_a_file_root(tmp_path, capsys):
    from quark_jax import cli

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "class.txt").write_text(topic("class"))
    mixture = register(docs, "refresh_cli_docs")
    assert cli.main(["data", "refresh", "--mixture", mixture, "--root", str(tmp_path / "root"), "--no_progress",
                     "--num_shards", "1"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["version"], line["parent"], line["output_documents"]) == (1, None, 1)
    assert line["content_hash"] == refresh.content_hash(tmp_path / "root" / "v0001")
    (tmp_path / "file").write_text("x")
    assert cli.main(["data", "refresh", "--mixture", mixture, "--root", str(tmp_path / "file"), "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert "quark data refresh: --root" in err and "is a file; pass a directory" in err and "Traceback" not in err
