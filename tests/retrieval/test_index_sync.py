"""Incremental knowledge-base updates: only changed documents are re-indexed; unchanged passages keep their ids and
are not re-embedded, changed ones are searchable by their new text only, removed ones are gone."""

from index_test_embedder import HashedBowEmbedder

from quark_jax.retrieval.index import Index
from quark_jax.retrieval.sync import content_hash, document_passages, indexed_documents, sync_documents


class CountingEmbedder(HashedBowEmbedder):
    def __init__(self):
        super().__init__(dim=32)
        self.embedded: list[str] = []

    def embed(self, texts, kind="passage"):
        if kind == "passage":
            self.embedded.extend(texts)
        return super().embed(texts, kind)


DOCS = {
    "json": "The json module encodes and decodes JSON documents.\n\nUse json.dumps to serialise objects.",
    "csv": "The csv module reads and writes comma separated values files with reader and writer objects.",
    "zlib": "The zlib module compresses data with the deflate algorithm.",
}


def test_sync_reindexes_only_changed_documents(tmp_path):
    embedder = CountingEmbedder()
    index = Index.create(str(tmp_path / "kb"), embedder=embedder)
    first = sync_documents(index, DOCS, max_chars=60)
    assert (first.added, first.changed, first.removed) == (["csv", "json", "zlib"], [], [])
    json_ids = sorted(pid for pid in index.ids() if pid.startswith("json#"))
    assert len(json_ids) == 2  # two paragraphs, 60 characters at most per passage
    csv_ids = sorted(pid for pid in index.ids() if pid.startswith("csv#"))
    embedded_before = len(embedder.embedded)

    updated = {"json": DOCS["json"],  # unchanged
               "csv": "The csv module now also sniffs dialects with the Sniffer class.",  # changed
               "tomllib": "The tomllib module parses TOML configuration files."}  # new; zlib removed
    report = sync_documents(index, updated, max_chars=60)
    assert (report.added, report.changed, report.removed, report.unchanged) == (["tomllib"], ["csv"], ["zlib"], ["json"])
    # Only the new and the changed documents' passages were embedded; json's passages are the same rows.
    assert embedder.embedded[embedded_before:] == [p.text for p in document_passages("csv", updated["csv"], 60)
                                                   + document_passages("tomllib", updated["tomllib"], 60)]
    assert sorted(pid for pid in index.ids() if pid.startswith("json#")) == json_ids
    assert [index.get(pid).text for pid in json_ids] == [p.text for p in document_passages("json", DOCS["json"], 60)]
    assert not set(csv_ids) & set(index.ids())  # the old csv passages are gone
    assert not [pid for pid in index.ids() if pid.startswith("zlib#")]

    hits = index.search("sniffs dialects Sniffer", k=1, mode="lexical")
    assert hits[0].metadata == {"document": "csv", "content_hash": content_hash(updated["csv"])}
    assert all(h.metadata["document"] != "zlib" for h in index.search("deflate compresses", k=10))
    assert all("comma separated" not in h.text for h in index.search("comma separated values reader", k=10))

    # Reopened from disk, a sync with nothing changed writes nothing.
    reopened = Index.open(str(tmp_path / "kb"), embedder=embedder)
    generation = reopened.manifest["generation"]
    idle = sync_documents(reopened, updated, max_chars=60)
    assert (idle.added, idle.changed, idle.removed, idle.passages_added, idle.passages_deleted) == ([], [], [], 0, 0)
    assert Index.open(str(tmp_path / "kb"), embedder=embedder).manifest["generation"] == generation


def test_an_interrupted_sync_is_finished_by_the_next(tmp_path):
    index = Index.create(str(tmp_path / "kb"), dense=False)
    sync_documents(index, DOCS)
    # The crash case: the new csv passages were added, the old ones not yet deleted.
    index.add(document_passages("csv", "The csv module, rewritten."))
    assert len(indexed_documents(index)["csv"]) == 2
    report = sync_documents(index, {**DOCS, "csv": "The csv module, rewritten."})
    assert report.changed == ["csv"] and report.passages_added == 0 and report.passages_deleted == 1
    assert list(indexed_documents(index)["csv"]) == [content_hash("The csv module, rewritten.")]
