"""``quark index sync`` in-process: a directory of documents kept in step with an index (a changed file is found
by its new text, not its old; a deleted one is gone; unchanged ones are untouched), one summary line, and bad
input as one line with exit status 2."""

from __future__ import annotations

import json
import os

from quark_jax import cli


def _search(capsys, index: str, query: str) -> list[dict]:
    assert cli.main(["index", "search", "--index", index, "--query", query, "--k", "10"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_sync_cli_reindexes_a_changed_document_and_drops_a_deleted_one(tmp_path, capsys):
    docs, index = tmp_path / "kb", str(tmp_path / "index")
    (docs / "modules").mkdir(parents=True)
    (docs / "modules" / "csv.md").write_text("The csv module reads comma separated values with reader objects.")
    (docs / "zlib.txt").write_text("The zlib module compresses data with the deflate algorithm.")
    (docs / "json.md").write_text("The json module encodes objects as JSON text with dumps.")
    (docs / "notes.bin").write_text("not a document: its suffix is not listed")
    os.symlink("/etc/hostname", docs / "outside.txt")  # a link out of the directory is not followed
    sync = ["index", "sync", "--index", index, "--source", str(docs), "--no_dense"]
    assert cli.main(sync) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["created"], first["added"], first["changed"], first["removed"], first["unchanged"]) == (True, 3, 0, 0, 0)

    (docs / "modules" / "csv.md").write_text("The csv module sniffs dialects with the Sniffer class.")
    (docs / "zlib.txt").unlink()
    assert cli.main(sync) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["created"], second["added"], second["changed"], second["removed"], second["unchanged"]) == \
        (False, 0, 1, 1, 1)

    hits = _search(capsys, index, "sniffs dialects Sniffer")
    assert hits[0]["metadata"]["document"] == "modules/csv.md" and "Sniffer" in hits[0]["text"]
    old = _search(capsys, index, "comma separated values reader")
    assert all("comma separated" not in h["text"] for h in old)  # the old text is no longer indexed
    assert all(h["metadata"]["document"] != "zlib.txt" for h in _search(capsys, index, "deflate compresses zlib"))
    assert cli.main(["index", "info", "--index", index]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["live"] == 2


def test_sync_cli_names_bad_input_in_one_line(tmp_path, capsys):
    index = str(tmp_path / "index")
    assert cli.main(["index", "sync", "--index", index, "--source", str(tmp_path / "missing"), "--no_dense"]) == 2
    assert capsys.readouterr().err == (f"quark index sync: --source {tmp_path / 'missing'}: no such directory (a "
                                       "directory of .md, .txt, .rst files, one document each)\n")
    docs = tmp_path / "kb"
    docs.mkdir()
    (docs / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert cli.main(["index", "sync", "--index", index, "--source", str(docs), "--no_dense"]) == 2
    assert capsys.readouterr().err == (f"quark index sync: --source {docs / 'latin1.txt'}: not UTF-8 text (bad byte "
                                       "at offset 3); convert it or remove it from the directory\n")
    (docs / "latin1.txt").write_text("now it is text")
    assert cli.main(["index", "sync", "--index", index, "--source", str(docs)]) == 2
    assert capsys.readouterr().err == (f"quark index sync: no index at {index}: a new dense index needs --model_dir "
                                       "RUN (the model that embeds); pass --no_dense for a BM25-only index\n")
    assert not os.path.exists(index)
