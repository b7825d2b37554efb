"""`quark data build`: cleaning report, bad input, shards read back by seqio, determinism, and training on it."""

import json
import os

import numpy as np
import pytest
import seqio

from quark_jax.data import build, built_tasks, catalogue, corpus, filters, mixtures, pipeline, sources, tasks
from tests.conftest import run_quark, tiny_overrides, train_args, train_losses

PROSE = ("The committee met on Tuesday to discuss the budget for the coming year. Several members argued that "
         "the funds for the library should be increased, and the chair agreed to prepare a proposal with the "
         "new figures before the next meeting.")
PROSE2 = ("A river runs through the old town, and in the spring the water rises over the stone steps that lead "
          "down from the market. The people who live there have learned to move their boats to higher ground.")


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A small mixture with every kind of problem, built once."""
    root = tmp_path_factory.mktemp("messy")
    text_dir = root / "text"
    text_dir.mkdir()
    (text_dir / "good.txt").write_text(PROSE)
    (text_dir / "copy.txt").write_text(PROSE.upper().replace(". ", ".  "))           # exact duplicate
    (text_dir / "near.txt").write_text(PROSE.replace("next meeting", "next session"))           # near duplicate
    (text_dir / "pii.txt").write_text(PROSE2 + " Write to anna.k@example.com or call 415-555-2671.")
    (text_dir / "french.txt").write_text("Le comité s'est réuni mardi pour discuter du budget de l'année "
                                         "prochaine, et la présidente a accepté de préparer une proposition.")
    (text_dir / "toxic.txt").write_text(PROSE2 + "\nYou are a worthless idiot and everyone knows it.")
    (text_dir / "short.txt").write_text("Too short to keep.")
    (text_dir / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 40)
    (text_dir / "empty.txt").write_text("\n\n")
    (text_dir / "huge.txt").write_text("word " * 30_000)
    (text_dir / "gone.txt").symlink_to(root / "missing-target")                      # unreadable
    jsonl = root / "d.jsonl"
    jsonl.write_text("\n".join([json.dumps({"text": PROSE2.replace("river", "canal"), "src": "x"}), "{broken",
                                '{"text": "lone surrogate \\ud800 here and more words to pass the word count rule of twenty"}',
                                json.dumps({"title": "no text"})]) + "\n")
    sources.register_source_task("messy.text", sources.TextFileSource(str(text_dir / "*.txt"), validation_fraction=0.0,
                                                                       max_chars=100_000))
    sources.register_source_task("messy.jsonl", sources.JsonlSource(str(jsonl), validation_fraction=0.0))
    tasks.register_mixture("messy", {"messy.text": 0.5, "messy.jsonl": 0.5})
    out = root / "built"
    report = build.build("messy", out, num_shards=2, progress=False, packing_length=0)
    return out, report


def test_report_counts_every_removal_and_bad_input(messy):
    out, report = messy
    text = report["tasks"]["messy.text"]["splits"]["train"]
    counts = text["counts"]
    assert counts["output_documents"] == 2  # good.txt and pii.txt
    for reason in ("exact_duplicate", "near_duplicate", "language:fr", "toxicity", "quality:word_count"):
        assert counts[f"removed/{reason}"] == 1, reason
    assert text["bad_input_by_reason"] == {"invalid_utf8": 1, "empty": 1, "huge": 1, "unreadable": 1}
    assert text["pii_replaced"] == {"<EMAIL>": 1, "<PHONE>": 1}
    assert text["removed_examples"]["toxicity"][0]["id"].endswith("toxic.txt")
    js = report["tasks"]["messy.jsonl"]["splits"]["train"]
    assert js["counts"]["output_documents"] == 1
    assert js["bad_input_by_reason"] == {"bad_json": 1, "missing_field": 1, "invalid_utf8": 1}
    # Every document is accounted for: kept + removed + bad (found while cleaning) = seen.
    for split in (text, js):
        c = split["counts"]
        removed = sum(v for k, v in c.items() if k.startswith("removed/"))
        assert c["input_documents"] == c["output_documents"] + removed + c.get("bad_document", 0)
    assert js["counts"]["bad_document"] == 1  # the lone surrogate
    md = (out / "report.md").read_text()
    assert "exact_duplicate" in md and "latin1.txt" in md and "invalid_utf8" in md
    assert json.loads((out / "report.json").read_text())["totals"]["output_documents"] == 3


def test_build_is_deterministic(messy, tmp_path):
    out, _ = messy
    again = tmp_path / "again"
    build.build("messy", again, num_shards=2, progress=False, packing_length=0)
    for shard in sorted(out.glob("*/*.tfrecord-*")):
        assert (again / shard.relative_to(out)).read_bytes() == shard.read_bytes(), shard


def test_shards_read_back_through_seqio(messy):
    out, report = messy
    name = built_tasks.register_built(out)
    assert name == "messy_clean" and "messy_clean.messy.text" in seqio.TaskRegistry.names()
    ds = seqio.get_mixture_or_task("messy_clean.messy.text").source.get_dataset("train", shuffle=False)
    texts = sorted(ex["text"].decode() for ex in ds.as_numpy_iterator())
    # The first of the duplicates in path order (copy.txt) is the one kept.
    assert len(texts) == 2 and filters.normalize(texts[1]) == filters.normalize(PROSE)
    assert "<EMAIL>" in texts[0] and "<PHONE>" in texts[0] and "anna.k" not in texts[0]
    batch = next(pipeline.batch_iterator(name, {"targets": 64}, 2, shuffle=False, repeat=True))
    assert batch["decoder_target_tokens"].shape == (2, 64)


@pytest.fixture(scope="module")
def demo_built(tmp_path_factory):
    """The four-source demo mixture with one stdlib package as its code source, built once."""
    mixtures.register_demo("demo_small", corpus.stdlib_root() / "email")
    out = tmp_path_factory.mktemp("demo_built")
    report = build.build("demo_small", out, progress=False, packing_length=0)
    return out, report


def test_demo_mixture_builds_from_four_sources(demo_built):
    out, report = demo_built
    assert set(report["tasks"]) == {f"demo_small.{t}" for t in mixtures.DEMO_RATES}
    for task, tr in report["tasks"].items():
        assert tr["splits"]["train"]["counts"]["output_documents"] > 0, task
    manifest = json.loads((out / built_tasks.MANIFEST).read_text())
    assert manifest["name"] == "demo_small_clean" and len(manifest["tasks"]) == 4


def test_built_data_is_deterministic_and_host_shards_are_disjoint(demo_built):
    out, _ = demo_built
    built_tasks.register_built(out)
    name = "demo_small_clean.demo_small.api_qa"  # one task of the built mixture keeps the test fast
    take = lambda **kw: next(pipeline.batch_iterator(name, {"targets": 128}, 4, **kw))["decoder_target_tokens"]
    a, b = take(seed=7), take(seed=7)
    assert np.array_equal(a, b) and not np.array_equal(a, take(seed=8))
    halves = [take(shuffle=False, repeat=False, shard_index=i, num_shards=2) for i in range(2)]
    rows = [{r.tobytes() for r in h} for h in halves]
    assert halves[0].shape == (2, 128) and not rows[0] & rows[1]


def test_data_gin_file_names_the_built_mixture(demo_built):
    from quark_jax import gin_utils

    out, _ = demo_built
    gin_utils.parse([os.path.join(gin_utils.REPO_ROOT, "configs/runs/pretrain_tiny.gin"), str(out / "data.gin")],
                    ["MODEL_DIR='/tmp/unused'", "TRAIN_STEPS=1"])
    assert gin_utils.build_train_config().data.mixture_or_task_name == "demo_small_clean"
    gin_utils.gin.clear_config()


@pytest.fixture(scope="module")
def cli_built(tmp_path_factory):
    """The whole four-source `quark_demo` mixture built through the command line (~40 s on 2 cores)."""
    out = tmp_path_factory.mktemp("cli_built")
    result = run_quark("data", "build", "--mixture", "quark_demo", "--output", str(out), "--no_progress",
                       "--gin.quark_jax.data.QualityConfig.min_words=10")
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result


def test_quark_data_cli_list_and_build(cli_built, tmp_path):
    listed = run_quark("data", "list")
    assert listed.returncode == 0 and "quark_demo.api_qa" in listed.stdout and "mixture" in listed.stdout
    with pytest.raises(ValueError, match="quark data list"):
        build.build("nope", tmp_path / "x")
    out, result = cli_built
    summary = json.loads(result.stdout.splitlines()[0])
    assert summary["name"] == "quark_demo_clean" and summary["output_documents"] > 1000
    assert 0.5 < summary["packing_efficiency"] <= 1.0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["quality"]["min_words"] == 10
    assert set(report["tasks"]) == {f"quark_demo.{t}" for t in mixtures.DEMO_RATES}
    assert "QUARK_DATA_DIRS" in result.stdout and (out / "report.md").is_file()


def test_build_then_train_tiny_model(cli_built, tmp_path):
    """Done-when: `quark data build` output (four sources) trains the tiny model through `quark train`; loss falls."""
    out, _ = cli_built
    model_dir = tmp_path / "run"
    result = run_quark(*train_args(tiny_overrides(model_dir, 12, MIXTURE_OR_TASK_NAME="'quark_demo_clean'")),
                       env={catalogue.DATA_DIRS_ENV: str(out)})
    assert result.returncode == 0, result.stderr[-3000:]
    losses = train_losses(model_dir)
    assert len(losses) == 12
    first, last = losses[min(losses)], losses[max(losses)]
    assert last < first - 0.5, losses


def test_a_moved_built_directory_reads_its_shards_where_it_now_is(messy, tmp_path):
    """The manifest records where the shards were built; they are read under the directory it was found in (so
    a built dataset can be copied elsewhere, or uploaded to gs://, as it is)."""
    import shutil

    out, _ = messy
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    hidden = out.with_name(out.name + "-hidden")
    out.rename(hidden)  # the recorded patterns now point nowhere
    try:
        name = built_tasks.register_built(moved)
        source = seqio.get_mixture_or_task(f"{name}.messy.text").source
        texts = [ex["text"] for ex in source.get_dataset("train", shuffle=False).as_numpy_iterator()]
    finally:
        hidden.rename(out)
        built_tasks.register_built(out)  # as the other tests of this module expect
    assert len(texts) == 2


def test_data_dirs_keep_urls_whole():
    assert catalogue.data_dirs(f"gs://bucket/built{os.pathsep}/local/built{os.pathsep}s3://b/x") == [
        "gs://bucket/built", "/local/built", "s3://b/x"]
