"""Hugging Face interop: a random transformers LlamaForCausalLM and quark_jax on the converted weights give
the same logits (max abs difference < 1e-4, float32), and exported weights load back into transformers.
transformers and torch are test-only dependencies; nothing is downloaded (HF_HUB_OFFLINE)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

# Plain imports: without torch/transformers (requirements-test.txt) this module fails; it never skips.
import torch  # noqa: E402
import transformers  # noqa: E402

from quark_jax.inference import hf  # noqa: E402
from quark_jax.models.transformer import abstract_model  # noqa: E402

TOLERANCE = 1e-4


def random_llama(tie: bool, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=500_000.0, tie_word_embeddings=tie,
        # Large random weights, so that logits are O(1) and a layout mistake cannot hide under the tolerance.
        initializer_range=0.2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms start at 1: perturb them so a swapped norm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens).long()).logits.float().numpy()


def quark_logits(config, params, tokens: np.ndarray) -> np.ndarray:
    graphdef = nnx.graphdef(abstract_model(config))
    model = nnx.merge(graphdef, params)
    positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    logits, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.ones(tokens.shape, jnp.int32))
    return np.asarray(logits)


TOKENS = np.random.default_rng(0).integers(0, 96, size=(2, 11))


@pytest.mark.parametrize("tie", [False, True])
def test_import_matches_transformers_logits(tmp_path, tie):
    model = random_llama(tie)
    model.config._attn_implementation = "eager"
    model.save_pretrained(tmp_path)
    config, params = hf.load_hf(str(tmp_path))
    assert (config.num_kv_heads, config.head_dim, config.rope_theta, config.tie_embeddings) == (2, 16, 500_000.0, tie)
    ours, theirs = quark_logits(config, params, TOKENS), hf_logits(model, TOKENS)
    assert np.abs(theirs).max() > 1.0
    print("max |logit|", np.abs(theirs).max(), "max abs diff", np.abs(ours - theirs).max())
    assert np.abs(ours - theirs).max() < TOLERANCE


def test_state_dict_of_torch_tensors_and_export_round_trip(tmp_path):
    model = random_llama(tie=False, seed=1)
    model.config._attn_implementation = "eager"
    config = hf.config_from_hf(model.config.to_dict())
    params = hf.params_from_state_dict(model.state_dict(), config)
    hf.save_hf(str(tmp_path / "export"), params, config)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "export"), attn_implementation="eager")
    assert np.abs(hf_logits(reloaded, TOKENS) - hf_logits(model, TOKENS)).max() < TOLERANCE
    # Our safetensors reader agrees with the safetensors library.
    from safetensors.numpy import load_file

    library = load_file(str(tmp_path / "export" / "model.safetensors"))
    ours = hf.read_safetensors(str(tmp_path / "export" / "model.safetensors"))
    assert sorted(library) == sorted(ours)
    for name in library:
        np.testing.assert_array_equal(library[name], ours[name])


def test_clear_errors():
    with pytest.raises(ValueError, match="only 'llama'"):
        hf.config_from_hf({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="sliding-window"):
        hf.config_from_hf({**random_llama(tie=True).config.to_dict(), "sliding_window": 128})
    config = hf.config_from_hf(random_llama(tie=True).config.to_dict())
    with pytest.raises(KeyError, match="model.norm.weight"):
        hf.params_from_state_dict(
            {k: v for k, v in random_llama(tie=True).state_dict().items() if k != "model.norm.weight"}, config)
    state = random_llama(tie=True).state_dict()
    state["model.layers.0.mlp.up_proj.weight"] = state["model.layers.0.mlp.up_proj.weight"][:, :5]
    with pytest.raises(ValueError, match="up_proj.weight: expected shape"):
        hf.params_from_state_dict(state, config)


def test_greedy_generation_matches_transformers(tmp_path):
    from quark_jax.inference.generate import Generator, Request

    model = random_llama(tie=False, seed=2)
    model.config._attn_implementation = "eager"
    model.save_pretrained(tmp_path)
    config, params = hf.load_hf(str(tmp_path))
    graphdef = nnx.graphdef(abstract_model(config))
    prompt = [5, 17, 33, 2, 8]
    with torch.no_grad():
        theirs = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0, len(prompt):].tolist()
    ours = Generator(graphdef, params, eos_id=10_000).generate_requests([Request(prompt, 8)])[0].tokens
    assert ours == theirs


def test_safetensors_writer_is_read_by_torch(tmp_path):
    from safetensors.torch import load_file

    tensors = {"a": np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3).astype(jnp.bfloat16),
               "b": np.arange(4, dtype=np.int64)}
    hf.write_safetensors(str(tmp_path / "t.safetensors"), tensors)
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert loaded["a"].dtype == torch.bfloat16
    np.testing.assert_array_equal(loaded["a"].float().numpy(), tensors["a"].astype(np.float32))
    np.testing.assert_array_equal(loaded["b"].numpy(), tensors["b"])
    assert {k: v.dtype for k, v in hf.read_safetensors(str(tmp_path / "t.safetensors")).items()} == {
        "a": np.dtype(jnp.bfloat16), "b": np.dtype(np.int64)}


def random_mixtral(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.MixtralConfig(
        vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, rms_norm_eps=1e-5,
        initializer_range=0.2, tie_word_embeddings=False,
    )
    model = transformers.MixtralForCausalLM(config).eval()
    model.config._attn_implementation = "eager"
    return model


def test_mixtral_import_export_matches_transformers(tmp_path):
    model = random_mixtral()
    model.save_pretrained(tmp_path / "hub")
    config, params = hf.load_hf(str(tmp_path / "hub"))
    assert (config.num_experts, config.experts_per_token, config.moe_dispatch) == (4, 2, "dropless")
    ours, theirs = quark_logits(config, params, TOKENS), hf_logits(model, TOKENS)
    print("mixtral max |logit|", np.abs(theirs).max(), "max abs diff", np.abs(ours - theirs).max())
    assert np.abs(theirs).max() > 1.0
    assert np.abs(ours - theirs).max() < TOLERANCE
    hf.save_hf(str(tmp_path / "export"), params, config)
    reloaded = transformers.MixtralForCausalLM.from_pretrained(str(tmp_path / "export"), attn_implementation="eager")
    assert np.abs(hf_logits(reloaded, TOKENS) - theirs).max() < TOLERANCE
