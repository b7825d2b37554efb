"""`quark import_hf`: Hugging Face checkpoints read tensor by tensor onto a mesh into a run directory that
`qj.load` and `quark generate` open, with the HF tokenizer; logits and token ids equal transformers'; damaged
files fail naming the file and tensor; config defaults follow the model type; Mixtral k=1 matches."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
import transformers
from flax import nnx
import jax.numpy as jnp

from hf_fixtures import TEST_STRINGS, hf_logits, tiny_llama, tiny_mixtral, tiny_tokenizer

import quark_jax as qj
from quark_jax import cli
from quark_jax.inference import hf
from quark_jax.inference.safetensors_io import CheckpointReader, SafetensorsError, read_header
from quark_jax.models.config import ModelConfig
from quark_jax.models.transformer import abstract_model

TOLERANCE = 1e-4
HERE = os.path.dirname(os.path.abspath(__file__))


def quark_logits(config, params, tokens):
    model = nnx.merge(nnx.graphdef(abstract_model(config)), params)
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    logits, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.ones(tokens.shape, jnp.int32))
    return np.asarray(logits)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A sharded tiny Llama checkpoint with a trained tokenizer, imported through `quark import_hf`."""
    root = tmp_path_factory.mktemp("hf")
    hf_dir, run = root / "llama", root / "run"
    model = tiny_llama(hf_dir, max_shard_size="100KB")  # several files and model.safetensors.index.json
    tokenizer = tiny_tokenizer(hf_dir)
    assert cli.main(["import_hf", "--hf_dir", str(hf_dir), "--out_dir", str(run)]) == 0
    return model, tokenizer, hf_dir, run


def test_import_hf_writes_a_run_that_qj_load_opens(imported):
    model, tokenizer, hf_dir, run = imported
    assert len({v for v in json.load(open(hf_dir / "model.safetensors.index.json"))["weight_map"].values()}) > 1
    loaded = qj.load(str(run))
    assert loaded.trained_context == 256 and loaded.step == 0
    tokens = np.random.default_rng(0).integers(0, 320, size=(2, 11))
    ours, theirs = quark_logits(loaded.config, loaded.params, tokens), hf_logits(model, tokens)
    assert np.abs(theirs).max() > 1.0
    assert np.abs(ours - theirs).max() < TOLERANCE
    # Token ids equal transformers' tokenizer: <s> in front of a prompt, nothing in front of a continuation.
    for text in TEST_STRINGS:
        assert list(loaded.tokenizer.prompt_prefix_ids) + loaded.tokenizer.encode(text) == tokenizer(text).input_ids
        assert loaded.tokenizer.encode(text) == tokenizer(text, add_special_tokens=False).input_ids
        ids = tokenizer(text).input_ids
        assert loaded.tokenizer.decode(ids) == tokenizer.decode(ids, skip_special_tokens=True)
    assert loaded.tokenizer.eos_id == 2


def test_generate_from_text_matches_transformers(imported, capsys):
    model, tokenizer, _, run = imported
    prompt = "def fib(n):"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = out[0, ids.shape[1]:].tolist()
    completion = qj.load(str(run)).complete([prompt], max_new_tokens=6)[0]
    assert completion.tokens == expected
    assert cli.main(["generate", "--model_dir", str(run), "--prompt", prompt, "--max_new_tokens", "6"]) == 0
    assert capsys.readouterr().out.strip() == (prompt + tokenizer.decode(expected, skip_special_tokens=True)).strip()


def test_a_quantized_imported_run_keeps_its_tokenizer(imported, tmp_path):
    from quark_jax import runs

    _, tokenizer, _, run = imported
    out = runs.save_quantized(str(run), str(tmp_path / "int8"), "int8")
    quantized = qj.load(out)
    assert quantized.quantization["mode"] == "int8" and quantized.trained_context == 256
    text = "def fib(n):"
    assert list(quantized.tokenizer.prompt_prefix_ids) + quantized.tokenizer.encode(text) == tokenizer(text).input_ids


def test_import_refuses_an_existing_run(imported, capsys):
    _, _, hf_dir, run = imported
    assert cli.main(["import_hf", "--hf_dir", str(hf_dir), "--out_dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds checkpoints/" in err


def test_mixtral_with_one_expert_per_token_matches_transformers(tmp_path):
    # transformers renormalises the top-k gates even for k = 1 (every gate becomes 1): so must we.
    model = tiny_mixtral(tmp_path / "hf", num_experts_per_tok=1)
    assert cli.main(["import_hf", "--hf_dir", str(tmp_path / "hf"), "--out_dir", str(tmp_path / "run")]) == 0
    loaded = qj.load(str(tmp_path / "run"))  # the run directory keeps the routing (model_config.json)
    config, params = loaded.config, loaded.params
    assert config.experts_per_token == 1 and config.renormalize_gates is True and config.moe_dispatch == "dropless"
    tokens = np.random.default_rng(1).integers(0, 96, size=(2, 9))
    theirs = hf_logits(model, tokens)
    assert np.abs(quark_logits(config, params, tokens) - theirs).max() < TOLERANCE
    switch = dataclasses.replace(config, renormalize_gates=None)  # the raw probability: the old defect
    assert np.abs(quark_logits(switch, params, tokens) - theirs).max() > 1e-2


def test_missing_config_keys_take_the_model_types_defaults(tmp_path):
    for model_type, cls in (("llama", transformers.LlamaConfig), ("mixtral", transformers.MixtralConfig)):
        theirs = cls().to_dict()
        for key, value in hf.HF_DEFAULTS[model_type].items():
            expected = theirs["rope_parameters"]["rope_theta"] if key == "rope_theta" else theirs[key]
            if value is None:  # derived: num_key_value_heads = num_attention_heads, head_dim = hidden // heads
                derived = (theirs["num_attention_heads"] if key == "num_key_value_heads"
                           else theirs["hidden_size"] // theirs["num_attention_heads"])
                assert expected in (None, derived), (model_type, key, expected)
                continue
            assert value == expected, (model_type, key, value, expected)
    # End to end: a Mixtral config.json without rope / norm keys loads as transformers loads it (rope 1e6).
    model = tiny_mixtral(tmp_path)
    path = tmp_path / "config.json"
    stripped = {k: v for k, v in json.load(open(path)).items()
                if k not in ("rope_parameters", "rope_theta", "rms_norm_eps")}
    path.write_text(json.dumps(stripped))
    config = hf.config_from_hf(stripped)
    assert (config.rope_theta, config.norm_eps) == (1e6, 1e-5)
    reference = transformers.MixtralForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert reference.config.rope_parameters["rope_theta"] == 1e6 and reference.config.rms_norm_eps == 1e-5
    tokens = np.random.default_rng(2).integers(0, 96, size=(1, 24))
    _, params = hf.load_hf(str(tmp_path))
    theirs = hf_logits(reference, tokens)
    assert np.abs(quark_logits(config, params, tokens) - theirs).max() < TOLERANCE
    llama_default = dataclasses.replace(config, rope_theta=1e4, norm_eps=1e-6)  # the old defect
    assert np.abs(quark_logits(llama_default, params, tokens) - theirs).max() > 1e-3
    del model


def test_capacity_moe_export_warns(tmp_path, caplog):
    config = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                         mlp_dim=32, num_experts=4, experts_per_token=2, moe_dispatch="capacity")
    with caplog.at_level(logging.WARNING, logger="quark_jax.inference.hf"):
        hf.config_to_hf(config)
    assert "dropless" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="quark_jax.inference.hf"):
        hf.config_to_hf(dataclasses.replace(config, moe_dispatch="dropless"))
    assert caplog.text == ""


# ---- untrusted files ---------------------------------------------------------------------------------------
def _single_file_llama(directory):
    tiny_llama(directory, num_hidden_layers=1)
    return directory / "model.safetensors"


def test_damaged_safetensors_fail_naming_file_and_tensor(tmp_path, capsys):
    path = _single_file_llama(tmp_path / "hf")
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    last = max((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][1])

    capsys.readouterr()  # transformers' progress lines
    path.write_bytes(data[:-100])  # truncated: the last tensor's bytes are cut
    with pytest.raises(SafetensorsError, match=f"{path}: tensor '{last}'.*truncated"):
        read_header(str(path))
    code = cli.main(["import_hf", "--hf_dir", str(tmp_path / "hf"), "--out_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and str(path) in err and last in err
    assert not (tmp_path / "run").exists()  # nothing written

    # A header length of 2**60: refused from the file size, nothing of that size allocated.
    path.write_bytes(struct.pack("<Q", 2 ** 60) + data[8:])
    tracemalloc.start()
    with pytest.raises(SafetensorsError, match="header claims 1152921504606846976 bytes"):
        read_header(str(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < len(data) + 1_000_000

    path.write_bytes(data[:8] + b"X" + data[9:])  # corrupted JSON
    with pytest.raises(SafetensorsError, match="header is not valid JSON"):
        read_header(str(path))

    bad = dict(header)  # a tensor whose byte range does not match its shape
    bad[last] = {**header[last], "shape": [1]}
    encoded = json.dumps(bad).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + header_len:])
    with pytest.raises(SafetensorsError, match=f"tensor '{last}'.*needs 4 bytes"):
        read_header(str(path))

    (tmp_path / "hf" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "../outside.safetensors"}}))
    with pytest.raises(SafetensorsError, match="not a file name inside"):
        CheckpointReader.from_dir(str(tmp_path / "hf"))


# ---- scale: bounded host memory, sharded equals unsharded -------------------------------------------------
def test_eight_device_import_equals_one_host_and_holds_one_tensor(tmp_path):
    tiny_llama(tmp_path / "llama", max_shard_size="60KB")
    tiny_mixtral(tmp_path / "mixtral")
    # Host memory: 19.4 MB of float32 weights whose largest tensor (embedding, head) is 2 MB.
    tiny_llama(tmp_path / "big", vocab_size=4096, hidden_size=128, intermediate_size=512, num_hidden_layers=16,
               num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    pairs = [f"{tmp_path / 'llama'}:data=2,fsdp=2,tensor=2", f"{tmp_path / 'mixtral'}:fsdp=2,tensor=2,expert=2",
             f"{tmp_path / 'big'}:one:data=1", f"{tmp_path / 'big'}:data=2,fsdp=2,tensor=2"]
    result = subprocess.run([sys.executable, os.path.join(HERE, "hf_import_mesh.py"), *pairs], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    print("\n".join(json.dumps(line) for line in lines))
    assert len(lines) == 4
    for line in lines:
        assert line["equal"], line
        assert line["largest_read"] <= line["largest_tensor"], line
        if line["mesh"] != "one:data=1":  # the big weights are split over fsdp x tensor (x expert)
            assert line["smallest_fraction"] <= 1 / 4, line
    for line in lines[2:]:  # one tensor read + its float32 layout copy at a time, never the model
        assert line["model_bytes"] > 8 * line["largest_tensor"]
        assert line["peak"] < 3 * line["largest_tensor"], line

def test_init_from_an_imported_run(tmp_path):
    """`--gin.INIT_FROM` warm-starts `quark train` from an imported run: after one step at a negligible
    learning rate the trained run's logits are still transformers'."""
    from conftest import REPO, run_quark, tiny_overrides

    model = tiny_llama(tmp_path / "hf", vocab_size=4096, rope_theta=500_000.0)  # the shipped tokenizer's 4k ids
    hf_config = json.load(open(tmp_path / "hf" / "config.json"))
    assert cli.main(["import_hf", "--hf_dir", str(tmp_path / "hf"), "--out_dir", str(tmp_path / "imported")]) == 0
    model_bindings = {
        "quark_jax.ModelConfig.d_model": 64, "quark_jax.ModelConfig.num_layers": 2,
        "quark_jax.ModelConfig.num_heads": 4, "quark_jax.ModelConfig.num_kv_heads": 2,
        "quark_jax.ModelConfig.head_dim": 16, "quark_jax.ModelConfig.mlp_dim": 112,
        "quark_jax.ModelConfig.rope_theta": 500_000.0, "quark_jax.ModelConfig.norm_eps": hf_config["rms_norm_eps"],
        "quark_jax.ModelConfig.tie_embeddings": False, "quark_jax.OptimizerConfig.learning_rate": 1e-12,
        "INIT_FROM": repr(str(tmp_path / "imported")),
        # Only the warm start and one step are under test: no evaluation, no samples, short rows.
        "quark_jax.TrainConfig.eval_batches": 0, "quark_jax.TrainConfig.sample_prompts": "()",
        "TASK_FEATURE_LENGTHS": "{'targets': 32}", "BATCH_SIZE": 2,
    }
    bindings = tiny_overrides(tmp_path / "ft", 1, **model_bindings)
    result = run_quark("train", f"--gin_file={os.path.join(REPO, 'configs', 'runs', 'finetune.gin')}",
                       *[f"--gin.{b}" for b in bindings])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warm-started 12 parameters" in result.stderr
    trained = qj.load(str(tmp_path / "ft"))
    tokens = np.random.default_rng(3).integers(0, 4096, size=(1, 16))
    assert np.abs(quark_logits(trained.config, trained.params, tokens) - hf_logits(model, tokens)).max() < TOLERANCE


def test_sentencepiece_only_directory(tmp_path):
    """A directory with a Llama-layout tokenizer.model and no tokenizer.json: ids are the sentencepiece
    library's with <s> in front of a prompt; transformers 5's converted tokenizer agrees on ordinary text."""
    import sentencepiece

    from hf_fixtures import tiny_sentencepiece

    tiny_llama(tmp_path / "hf", vocab_size=360)
    path = tiny_sentencepiece(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "legacy": False}))
    assert cli.main(["import_hf", "--hf_dir", str(tmp_path / "hf"), "--out_dir", str(tmp_path / "run")]) == 0
    vocabulary = qj.load(str(tmp_path / "run")).tokenizer
    processor = sentencepiece.SentencePieceProcessor(model_file=path)
    transformers_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    for text in TEST_STRINGS:
        ids = list(vocabulary.prompt_prefix_ids) + vocabulary.encode(text)
        assert ids == [1] + processor.encode(text)
        assert vocabulary.decode(ids) == processor.decode(ids)
        if "</s>" not in text and not text.startswith("  "):  # the two documented differences
            assert ids == transformers_tokenizer(text).input_ids, text
    assert vocabulary.eos_id == 2
