"""DistillSpec data: `quark data distill` writes the teacher's own samples on prompts of its corpus; the samples
are what the teacher's text API generates for those prompts and seeds; the seqio task yields exactly their token
sequences; the content hash names them; configs/runs/distill_spec.gin trains a draft on them."""

import json
import os
import shutil

import pytest
import seqio

import quark_jax as qj
from conftest import REPO, tiny_overrides, train_losses
from quark_jax import cli, distill_samples, lineage
from quark_jax.data import corpus, teacher_samples
from quark_jax.data.tokenizer import EOS_ID

SAMPLES, VALIDATION, NEW_TOKENS, PROMPT_TOKENS, ROWS, SEED = 8, 2, 24, 16, 4, 3
DISTILL_SPEC = f"{REPO}/configs/runs/distill_spec.gin"


@pytest.fixture(scope="module")
def samples(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("samples") / "teacher_samples"
    code = cli.main(["data", "distill", "--teacher_dir", trained_run["model_dir"], "--out", str(out),
                     "--samples", str(SAMPLES), "--validation_samples", str(VALIDATION), "--max_new_tokens",
                     str(NEW_TOKENS), "--prompt_tokens", str(PROMPT_TOKENS), "--batch_size", str(ROWS),
                     "--seed", str(SEED), "--no_progress"])
    assert code == 0
    records = {split: [json.loads(line) for line in (out / name).read_text().splitlines()]
               for split, name in teacher_samples.SPLIT_FILES.items()}
    return {"dir": out, "records": records, "manifest": json.loads((out / teacher_samples.MANIFEST).read_text())}


def test_samples_are_the_teachers_generations_for_corpus_prompts(samples, trained_run):
    manifest, records = samples["manifest"], samples["records"]
    assert manifest["counts"] == {"train": SAMPLES, "validation": VALIDATION}
    assert (manifest["mixture"], manifest["temperature"], manifest["teacher_step"]) == ("stdlib", 1.0, 40)
    assert manifest["teacher_run_id"] == lineage.read_lineage(trained_run["model_dir"])["run_id"]
    model = qj.load(trained_run["model_dir"])
    # The independent path: the text API on the prompt text, a batch of ROWS with a shared seed (row i: seed + i).
    train = records["train"]
    for start in range(0, SAMPLES, ROWS):
        batch = train[start:start + ROWS]
        texts = model.generate([r["prompt"] for r in batch], max_new_tokens=NEW_TOKENS, temperature=1.0,
                               seed=SEED + start)
        assert texts == [model.tokenizer.decode(r["completion_ids"]) for r in batch] == [r["completion"] for r in batch]
    assert len({r["completion"] for r in train}) == SAMPLES  # sampled, not one string repeated
    assert model.generator.trace_count[0] == 1
    # The writer's own path on the same model reuses that one compiled function, the padded last batch included.
    prompts = [r["prompt_ids"] for r in train + records["validation"]]
    again = distill_samples.generate_samples(model, prompts, NEW_TOKENS, 1.0, SEED, ROWS)
    assert [r["completion_ids"] for r in again[:SAMPLES]] == [r["completion_ids"] for r in train]
    assert model.generator.trace_count[0] == 1
    # Prompts: the first PROMPT_TOKENS tokens of corpus examples, train prompts from train documents only.
    documents = {split: "\n".join(d for kind in corpus.KINDS for d in corpus.stdlib_documents(kind, split))
                 for split in ("train", "validation")}
    for split, rows in records.items():
        for r in rows:
            assert len(r["prompt_ids"]) == PROMPT_TOKENS
            assert list(model.tokenizer.encode(r["prompt"])) == r["prompt_ids"]
            assert r["prompt"] in documents[split]
            assert len(r["completion_ids"]) == NEW_TOKENS or r["finish_reason"] == "eos"


def test_the_task_yields_exactly_the_sample_sequences(samples):
    name = teacher_samples.register_samples(samples["dir"])
    assert name == "teacher_samples_" + samples["manifest"]["content_hash"].split(":")[1][:12]
    for split, rows in samples["records"].items():
        dataset = seqio.get_mixture_or_task(name).get_dataset({"targets": 128}, split=split, shuffle=False)
        got = [example["targets"].tolist() for example in dataset.as_numpy_iterator()]
        assert got == [r["prompt_ids"] + r["completion_ids"] + ([EOS_ID] if r["finish_reason"] == "eos" else [])
                       for r in rows]
    # With a share of the corpus: a mixture of the samples task and the teacher's mixture at its own rates.
    mixture = seqio.get_mixture_or_task(teacher_samples.teacher_samples(str(samples["dir"]), corpus_fraction=0.25))
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates == pytest.approx({name: 0.75, "stdlib_code": 0.2, "stdlib_docstrings": 0.05})


def test_the_content_hash_names_the_samples(samples, tmp_path):
    manifest = samples["manifest"]
    assert manifest["content_hash"] == teacher_samples.records_hash(samples["records"])
    # Reformatted (keys reordered, indented): the same content, the same hash; the directory still reads.
    copy = tmp_path / "reformatted"
    shutil.copytree(samples["dir"], copy)
    path = copy / "train.jsonl"
    path.write_text("".join(json.dumps(dict(reversed(list(json.loads(line).items())))) + "\n\n"
                            for line in path.read_text().splitlines()))
    assert teacher_samples.read_samples(copy) == samples["records"]
    # One token of one sample changed: another hash, and the directory is refused until written again.
    edited = tmp_path / "edited"
    shutil.copytree(samples["dir"], edited)
    rows = [json.loads(line) for line in (edited / "train.jsonl").read_text().splitlines()]
    rows[5]["completion_ids"][3] += 1
    (edited / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    changed = teacher_samples.records_hash({**samples["records"], "train": rows})
    assert changed != manifest["content_hash"]
    with pytest.raises(teacher_samples.SamplesDirError, match=f"records hash to {changed} but samples.json says "
                                                              f"{manifest['content_hash']}"):
        teacher_samples.register_samples(edited)


def test_distill_spec_trains_a_draft_on_the_samples(samples, trained_run, tmp_path):
    model_dir = tmp_path / "draft"
    steps = 6
    trainer = qj.Trainer.from_gin(DISTILL_SPEC, tiny_overrides(
        model_dir, steps, TEACHER_DIR=repr(trained_run["model_dir"]), SAMPLES_DIR=repr(str(samples["dir"])),
        CHECKPOINT_PERIOD=steps, **{"quark_jax.TrainConfig.sample_prompts": "()",
                                    "quark_jax.TrainConfig.eval_batches": 1}))
    summary = trainer.run()
    losses = train_losses(model_dir)
    assert losses[steps] < losses[1] - 0.3, losses
    assert summary["val_loss"] < losses[1]
    assert json.loads((model_dir / "objective.json").read_text())["kind"] == "distill"
    data = lineage.read_lineage(str(model_dir))["data"][0]
    assert data["name"] == teacher_samples.task_name(samples["manifest"])
    assert data["path"] == str(samples["dir"]) and len(data["sha256"]) == 64


@pytest.mark.parametrize("flags, message", [
    (["--teacher_dir", "{missing}"], "quark data distill: --teacher_dir {missing}: no such directory; pass the "
                                     "MODEL_DIR of a `quark train` run"),
    (["--samples", "0"], "quark data distill: --samples=0: must be >= 1"),
    (["--samples", "-3"], "quark data distill: --samples=-3: must be >= 1"),
    (["--out", "{nonempty}"], "quark data distill: --out {nonempty} already exists and is not an empty directory"),
])
def test_bad_input_is_one_line_and_exit_2(flags, message, trained_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    names = {"missing": str(tmp_path / "no_run"), "nonempty": str(tmp_path / "taken")}
    flags = [f.format(**names) for f in flags]
    base = {"--teacher_dir": trained_run["model_dir"], "--out": str(tmp_path / "out")}
    base.update(dict(zip(flags[::2], flags[1::2])))
    code = cli.main(["data", "distill", "--no_progress", *[x for kv in base.items() for x in kv]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(message.format(**names)), err
    assert not os.path.exists(tmp_path / "out")
