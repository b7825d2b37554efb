"""The Embedder against an independent reference (one text at a time, un-jitted, numpy pooling), its identity,
and `quark embed`."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import quark_jax as qj
from quark_jax.cli import main
from quark_jax.retrieval.embedder import Embedder

TEXTS = ["def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)", "Return the JSON string of obj.",
         "import os\n" * 40, "  spaces  and\ttabs  "]


def reference_hidden(model, text: str, prefix: str, max_len: int) -> np.ndarray:
    """One text: 0 (the decoder's start) + tokens + EOS, cut to max_len, through the plain un-jitted model."""
    vocabulary = model.tokenizer
    ids = [0] + list(vocabulary.encode(prefix + text))[: max_len - 2] + [vocabulary.eos_id]
    tokens = jnp.asarray([ids], jnp.int32)
    *_, hidden = nnx.merge(model.graphdef, model.params)(tokens, jnp.arange(len(ids))[None], jnp.ones_like(tokens),
                                                         return_hidden=True)
    return np.asarray(hidden[0], np.float64)


def numpy_pool(hidden: np.ndarray, pooling: str) -> np.ndarray:
    vector = hidden.mean(axis=0) if pooling == "mean" else hidden[-1]
    return vector / np.linalg.norm(vector)


@pytest.fixture(scope="module")
def model(trained_run):
    return qj.load(trained_run["model_dir"])


def test_vectors_equal_the_unbatched_reference_whatever_the_batch(model, trained_run):
    """Mean pooling in batches of 1 and 3 (other rows and padding beside each text), last-token pooling in
    batches of 2, in two orders: every vector equals the one-text reference (the un-jitted reference costs about
    a second per text, so the passages are two of the texts)."""
    for kind, prefix, texts in (("query", "query: ", TEXTS), ("passage", "passage: ", TEXTS[1:3])):
        hidden = [reference_hidden(model, t, prefix, 64) for t in texts]
        for pooling, batch_sizes in (("mean", (1, 3)), ("last", (2,))):
            expected = np.stack([numpy_pool(h, pooling) for h in hidden])
            embedders = [Embedder.from_run(trained_run["model_dir"], pooling=pooling, max_len=64, batch_size=b)
                         for b in batch_sizes]
            assert len({e.identity for e in embedders}) == 1  # the batch size is not part of the identity
            for embedder in embedders:
                got = embedder.embed(texts, kind)
                assert got.dtype == np.float32 and got.shape == (len(texts), model.config.d_model)
                np.testing.assert_allclose(got, expected, atol=2e-5)
                np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
            np.testing.assert_allclose(embedders[-1].embed(texts[::-1], kind)[::-1], expected, atol=2e-5)
    embedder = embedders[0]
    long_ids = embedder.token_ids([TEXTS[2]])[0]  # 40 lines cut to max_len, the EOS kept
    assert len(long_ids) == 64 and long_ids[-1] == model.tokenizer.eos_id
    assert not np.allclose(embedder.embed(TEXTS[:1], "query"), embedder.embed(TEXTS[:1], "passage"))


def test_identity_names_the_settings(model, trained_run):
    run_default = Embedder.from_run(trained_run["model_dir"])
    assert run_default.embed([]).shape == (0, model.config.d_model)
    identity = json.loads(run_default.identity.split(":", 1)[1])
    # Not a contrastive run: defaults, max_len capped at the trained context (128 tokens).
    assert identity == {"model": trained_run["model_dir"], "step": model.step, "pooling": "mean", "max_len": 128,
                        "query_prefix": "query: ", "passage_prefix": "passage: "}
    assert Embedder.from_run(trained_run["model_dir"], pooling="last").identity != run_default.identity
    unnamed, again = Embedder(model, max_len=128), Embedder(model, max_len=128)
    assert unnamed.identity == again.identity and "params-sha256:" in unnamed.identity
    np.testing.assert_array_equal(unnamed.embed(TEXTS[:2]), run_default.embed(TEXTS[:2]))
    with pytest.raises(ValueError, match="pooling='max' must be one of"):
        Embedder(model, pooling="max")
    with pytest.raises(TypeError, match=r"not one string: embed\(\[text\]\)"):
        run_default.embed("one text")


def test_quark_embed_cli(trained_run, tmp_path, capsys):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:3]))
    output = tmp_path / "vectors.npy"
    code = main(["embed", "--model_dir", trained_run["model_dir"], "--input", str(texts), "--output", str(output),
                 "--kind", "query", "--batch_size", "2"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    embedder = Embedder.from_run(trained_run["model_dir"])
    assert code == 0 and printed["count"] == 3 and printed["dim"] == embedder.dim
    assert printed["identity"] == embedder.identity
    vectors = np.load(output, allow_pickle=False)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, embedder.embed(TEXTS[:3], "query"), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".embed-")] == []  # no temporary left

    empty, bad = tmp_path / "empty.txt", tmp_path / "bad.jsonl"
    empty.write_text("\n  \n")
    bad.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    cases = [
        (["--input", str(empty)], f"quark embed: --input {empty}: no texts in the file"),
        (["--input", str(bad)], f'quark embed: --input {bad} line 2: each line must be an object with a string "text"'),
        (["--input", str(tmp_path / "none.txt")],
         f"quark embed: --input {tmp_path / 'none.txt'}: no such regular file"),
    ]
    for args, message in cases:
        code = main(["embed", "--model_dir", trained_run["model_dir"], "--output", str(tmp_path / "x.npy"), *args])
        assert code == 2 and capsys.readouterr().err.strip() == message
    code = main(["embed", "--model_dir", str(tmp_path / "norun"), "--input", str(texts), "--output", str(output)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"quark embed: --model_dir {tmp_path / 'norun'}: no such directory")
    assert "\n" not in err and not (tmp_path / "x.npy").exists()
