"""``quark index`` in-process: build/add/delete/search/info on a BM25 index, usage errors as one line with exit
status 2, and the dense path through ``index_cli.run`` with a test embedder."""

import argparse
import json

from index_test_embedder import HashedBowEmbedder

from quark_jax import cli
from quark_jax.retrieval import index_cli


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


ROWS = [{"id": "a", "text": "json.loads parses a JSON string", "metadata": {"module": "json"}},
        {"id": "b", "text": "os.path.join joins path parts"},
        {"id": "c", "text": "JSONDecoder.raw_decode returns the object and the end index"}]


def _lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_cli_lexical_index_lifecycle(tmp_path, capsys):
    idx = str(tmp_path / "idx")
    assert cli.main(["index", "build", "--index", idx, "--passages", _write(tmp_path / "p.jsonl", ROWS),
                     "--no_dense"]) == 0
    assert _lines(capsys)[0]["counts"] == {"rows": 3, "deleted": 0, "live": 3}
    assert cli.main(["index", "search", "--index", idx, "--query", "json decoder", "--k", "5"]) == 0
    hits = _lines(capsys)
    assert [h["id"] for h in hits] == ["c", "a"] and hits[1]["metadata"] == {"module": "json"}
    assert hits[0]["rank"] == 1 and hits[0]["score"] > hits[1]["score"] > 0
    assert cli.main(["index", "add", "--index", idx, "--passages",
                     _write(tmp_path / "more.jsonl", [{"id": "d", "text": "json.dumps writes JSON"}])]) == 0
    assert cli.main(["index", "delete", "--index", idx, "--ids", "c"]) == 0
    capsys.readouterr()
    assert cli.main(["index", "search", "--index", idx, "--query", "json"]) == 0
    assert sorted(h["id"] for h in _lines(capsys)) == ["a", "d"]
    assert cli.main(["index", "info", "--index", idx]) == 0
    info = _lines(capsys)[0]
    assert info["parts"] == {"lexical": True, "dense": False, "hnsw": False} and info["counts"]["live"] == 3


def test_cli_usage_errors_are_one_line_exit_2(tmp_path, capsys):
    idx = str(tmp_path / "idx")
    passages = _write(tmp_path / "p.jsonl", ROWS)
    cases = [
        (["index", "build", "--index", idx, "--passages", passages],
         "quark index build: a dense index needs --model_dir RUN"),
        (["index", "build", "--index", idx, "--passages", str(tmp_path / "none.jsonl"), "--no_dense"],
         "no such file"),
        (["index", "build", "--index", idx, "--no_dense", "--passages",
          _write(tmp_path / "dup.jsonl", ROWS + [ROWS[0]])], "passage id 'a' is already in index"),
        (["index", "search", "--index", idx, "--query", "x"], "no such index directory"),
    ]
    (tmp_path / "bad.jsonl").write_text('{"id": "x", "text": "ok"}\n{"id": 3}\n')
    cases.append((["index", "build", "--index", idx, "--no_dense", "--passages", str(tmp_path / "bad.jsonl")],
                  "bad.jsonl line 2: each line needs a string \"id\""))
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "idx").exists()  # the failed build (duplicate id) left nothing behind
    assert cli.main(["index", "build", "--index", idx, "--passages", passages, "--no_dense"]) == 0
    capsys.readouterr()
    assert cli.main(["index", "search", "--index", idx, "--query", "   "]) == 2
    assert "query 0 is empty" in capsys.readouterr().err


def test_run_dense_with_an_embedder(tmp_path):
    embedder = HashedBowEmbedder(dim=16)
    out = []
    args = argparse.Namespace(index_command="build", index=str(tmp_path / "idx"), model_dir="RUN", hnsw=True,
                              no_dense=False, no_lexical=False, passages=_write(tmp_path / "p.jsonl", ROWS))
    assert index_cli.run(args, make_embedder=lambda run_dir: embedder, out=out.append) == 0
    assert json.loads(out[0])["embedder"] == embedder.identity and json.loads(out[0])["parts"]["hnsw"]
    search = argparse.Namespace(index_command="search", index=str(tmp_path / "idx"), model_dir="RUN",
                                query="os path join", k=1, mode="dense")
    assert index_cli.run(search, make_embedder=lambda run_dir: embedder, out=out.append) == 0
    assert json.loads(out[-1])["id"] == "b"
    search.model_dir, search.mode = None, None  # no model: a dense index falls back to lexical search
    assert index_cli.run(search, out=out.append) == 0 and json.loads(out[-1])["id"] == "b"
