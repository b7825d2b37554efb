"""Weight pruning: exact sparsity per matrix and globally, the 2:4 pattern in every group, untouched embeddings,
norms and routers, the identity at 0%, a pruned run that ``qj.load`` reads with the logits of independently
masked weights, zeros that stay zero through the masked train step, and one-line CLI errors."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from inference_helpers import tiny_config, tiny_model
from quark_jax.inference import prune

BLOCK_WEIGHTS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
# Matrix axes of each weight (after its layers/experts axes) and how many of them are inputs.
MATRIX = {"wq": (3, 1), "wk": (3, 1), "wv": (3, 1), "wo": (3, 2), "w_gate": (2, 1), "w_up": (2, 1), "w_down": (2, 1)}


def _weights(params) -> dict[str, np.ndarray]:
    return {".".join(str(getattr(k, "key", k)) for k in path): np.asarray(w)
            for path, w in jax.tree_util.tree_leaves_with_path(params)}


def _matrices(name: str, w: np.ndarray) -> np.ndarray:
    """[count, size]: every matrix of a stacked (layers, experts) weight, flattened."""
    ndim, _ = MATRIX[name.rsplit(".", 1)[-1]]
    return w.reshape(-1, int(np.prod(w.shape[w.ndim - ndim:])))


def _reference_layer_prune(w: np.ndarray, name: str, sparsity: float) -> np.ndarray:
    """Each matrix's entries below its k-th smallest magnitude zeroed (np.partition; no ties in random floats)."""
    rows = _matrices(name, w).copy()
    k = int(round(sparsity * rows.shape[1]))
    if k:
        threshold = np.partition(np.abs(rows), k - 1, axis=1)[:, k - 1: k]
        rows[np.abs(rows) <= threshold] = 0
    return rows.reshape(w.shape)


def test_layer_scope_zeros_exactly_the_smallest_of_every_matrix():
    _, params = tiny_model()
    for sparsity in (0.3, 0.7):
        pruned = _weights(prune.prune_params(params, sparsity, "magnitude", "layer"))
        for name, w in _weights(params).items():
            if name.rsplit(".", 1)[-1] not in BLOCK_WEIGHTS:
                continue
            rows, original = _matrices(name, pruned[name]), _matrices(name, w)
            expected_zeros = round(sparsity * rows.shape[1])
            assert [int((r == 0).sum()) for r in rows] == [expected_zeros] * len(rows), name
            np.testing.assert_array_equal(pruned[name], _reference_layer_prune(w, name, sparsity))
            kept = rows != 0
            assert np.array_equal(rows[kept], original[kept])  # survivors are unchanged


def test_global_scope_ranks_the_whole_model_at_once():
    _, params = tiny_model()
    sparsity = 0.5
    pruned = _weights(prune.prune_params(params, sparsity, "magnitude", "global"))
    original = _weights(params)
    names = [n for n in original if n.rsplit(".", 1)[-1] in BLOCK_WEIGHTS]
    everything = np.concatenate([original[n].ravel() for n in names])
    after = np.concatenate([pruned[n].ravel() for n in names])
    assert int((after == 0).sum()) == round(sparsity * everything.size)
    # One threshold: every pruned weight is smaller than every kept one, wherever it sits.
    assert np.abs(everything[after == 0]).max() < np.abs(everything[after != 0]).min()
    fractions = prune.sparsity_of(prune.prune_params(params, sparsity, "magnitude", "global"))
    # The residual-branch outputs start smaller (wo, w_down: std / sqrt(2L)), so they lose more.
    assert fractions["blocks.attn.wo"] > 0.6 and fractions["blocks.attn.wq"] < 0.4, fractions
    assert fractions["total"] == pytest.approx(sparsity, abs=1e-9)


def test_two_four_keeps_the_two_largest_of_every_four_inputs_dense_and_experts():
    config = tiny_config(num_experts=4, experts_per_token=2)
    _, params = tiny_model(config)
    pruned = _weights(prune.prune_params(params, 0.5, "2:4"))
    original = _weights(params)
    checked = 0
    for name, w in original.items():
        short = name.rsplit(".", 1)[-1]
        if short not in BLOCK_WEIGHTS:
            np.testing.assert_array_equal(pruned[name], w, err_msg=name)  # embedding, norms, router untouched
            continue
        ndim, inputs = MATRIX[short]
        lead = w.ndim - ndim
        # [..., inputs flattened, outputs flattened] -> groups of 4 along the inputs of each output.
        shape = w.shape[:lead] + (int(np.prod(w.shape[lead: lead + inputs])), -1)
        before, after = w.reshape(shape), pruned[name].reshape(shape)
        before = np.moveaxis(before, -1, -2).reshape(before.shape[:-2] + (before.shape[-1], -1, 4))
        after = np.moveaxis(after, -1, -2).reshape(before.shape)
        assert np.all((after != 0).sum(-1) == 2), name  # exactly 2 of every 4 survive
        top2 = np.sort(np.abs(before), axis=-1)[..., 2:]
        np.testing.assert_array_equal(np.sort(np.abs(after), axis=-1)[..., 2:], top2, err_msg=name)
        checked += 1
    assert checked == 7  # attention and the experts' w_gate / w_up / w_down
    assert "moe_blocks.moe.router" in original and original["moe_blocks.moe.w_up"].ndim == 4  # [L E D F]


def test_zero_sparsity_is_the_identity_and_bad_requests_are_refused():
    _, params = tiny_model()
    for scope in ("layer", "global"):
        same = _weights(prune.prune_params(params, 0.0, "magnitude", scope))
        for name, w in _weights(params).items():
            np.testing.assert_array_equal(same[name], w, err_msg=name)
    with pytest.raises(ValueError, match=r"sparsity=0.3 must be 0.5"):
        prune.prune_masks(params, 0.3, "2:4")
    with pytest.raises(ValueError, match=r"sparsity=1.0: must be in \[0, 1\)"):
        prune.prune_masks(params, 1.0)
    with pytest.raises(ValueError, match="multiple of 4"):
        prune.two_four_mask(jnp.ones((6, 8)), (-2,))


def _write_tiny_run(run_dir: str) -> tuple[nnx.GraphDef, dict]:
    """A random-init tiny model written as a run directory (model_config.json + a step-0 checkpoint)."""
    from quark_jax import runs
    from quark_jax.training.checkpoint import Checkpointer

    config = tiny_config(vocab_size=4096, init_std=0.05)
    graphdef, params = tiny_model(config)
    os.makedirs(run_dir)
    runs.write_model_config(run_dir, config)
    checkpointer = Checkpointer(run_dir, async_save=False)
    try:
        checkpointer.save(0, params, {"empty": jnp.zeros(())}, {"step": 0, "data_position": 0}, force=True)
    finally:
        checkpointer.close()
    return graphdef, params


def _logits(graphdef, params, tokens):
    tokens = jnp.asarray(tokens, jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return np.asarray(nnx.merge(graphdef, params)(tokens, positions, jnp.ones_like(tokens))[0])


def test_quark_prune_writes_a_run_that_qj_load_reads(tmp_path, capsys):
    import quark_jax as qj
    from quark_jax.cli import main

    source = str(tmp_path / "run")
    graphdef, params = _write_tiny_run(source)
    out = str(tmp_path / "sparse")
    assert main(["prune", "--model_dir", source, "--out", out, "--sparsity", "0.6"]) == 0
    assert f"written to {out}" in capsys.readouterr().out
    loaded = qj.load(out)
    info = json.loads((tmp_path / "sparse" / "pruning.json").read_text())
    assert info["method"] == "magnitude" and info["scope"] == "layer" and info["measured_sparsity"] == pytest.approx(0.6, abs=1e-3)
    # The reference: the same weights masked here, by np.partition per matrix, run through the model.
    reference = jax.tree_util.tree_map_with_path(
        lambda path, w: (_reference_layer_prune(np.asarray(w), str(path[-1].key), 0.6)
                         if str(path[-1].key) in BLOCK_WEIGHTS else w), params)
    tokens = [[5, 17, 300, 42, 9, 2048, 7, 1]]
    np.testing.assert_allclose(_logits(loaded.graphdef, loaded.params, tokens),
                               _logits(graphdef, reference, tokens), rtol=1e-5, atol=1e-5)
    assert not np.allclose(_logits(graphdef, params, tokens), _logits(graphdef, reference, tokens), atol=1e-3)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary directory left behind

    # CLI mistakes: exit 2, one line naming the culprit, nothing written.
    cases = [
        (["--sparsity", "1.5"], "quark prune: --sparsity 1.5: must be in [0, 1)"),
        (["--method", "2:4", "--sparsity", "0.3"], "quark prune: --method 2:4 removes exactly half the weights; drop --sparsity 0.3"),
        (["--method", "2:4", "--scope", "global"], "quark prune: --scope global does not apply to --method 2:4"),
        (["--recover_steps", "-1"], "quark prune: --recover_steps=-1: must be >= 0"),
    ]
    for extra, message in cases:
        assert main(["prune", "--model_dir", source, "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(message) and "\n" not in err, err
    assert main(["prune", "--model_dir", source, "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"quark prune: --out {out} already holds checkpoints/; write the pruned run to a new directory"
    assert main(["prune", "--model_dir", str(tmp_path / "nope"), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"quark prune: --model_dir {tmp_path / 'nope'}: no such directory") and "\n" not in err
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


def test_the_masked_train_step_keeps_zeros_at_zero():
    import optax

    from quark_jax import sharding as sh
    from quark_jax.training.config import OptimizerConfig
    from quark_jax.training.optim import make_optimizer
    from quark_jax.training.sharded import make_sharded_training, synthetic_batch

    config = tiny_config(vocab_size=4096, init_std=0.05)
    mesh = sh.make_mesh("data=-1")
    batch = synthetic_batch(config.vocab_size, 4, 32)
    optimizer = OptimizerConfig(learning_rate=1e-2, warmup_steps=1, keep_zero_weights=True)
    training = make_sharded_training(config, mesh, optimizer, total_steps=3)
    with sh.activate(mesh):
        state = training.init(jax.random.key(0))
        pruned = prune.prune_params(state.params, 0.5, "magnitude", "global")
        start = _weights(pruned)
        state = state.replace(params=jax.device_put(pruned, training.state_shardings.params))
        losses = []
        for _ in range(3):  # the train step the Trainer runs, with the run's optimizer
            state, metrics = training.step(state, training.device_batch(batch))
            losses.append(float(metrics["loss"]))
    after = _weights(state.params)
    assert losses[-1] < losses[0]  # it trains
    for name, w in start.items():
        if name.rsplit(".", 1)[-1] in BLOCK_WEIGHTS:
            assert np.all(after[name][w == 0] == 0), name  # the zeros stay zero
            assert not np.allclose(after[name][w != 0], w[w != 0]), name  # the survivors learn
    assert prune.sparsity_of(jax.tree.map(np.asarray, state.params))["total"] == pytest.approx(0.5, abs=1e-9)

    # Without the mask the same optimizer fills the zeros in (so the checks above can fail).
    wq = jnp.asarray(start["blocks.attn.wq"])
    grads = jax.random.normal(jax.random.key(1), wq.shape)
    decay = {"w": True}
    for keep, moved in ((False, True), (True, False)):
        tx, _ = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=1, keep_zero_weights=keep), 3, decay)
        params, opt_state = {"w": wq}, tx.init({"w": wq})
        for _ in range(2):  # the first update has the warm-up's learning rate 0
            updates, opt_state = tx.update({"w": grads}, opt_state, params)
            params = optax.apply_updates(params, updates)
        new = np.asarray(params["w"])
        assert (np.count_nonzero(new[np.asarray(wq) == 0]) > 0) == moved, keep


def test_the_recovery_gin_file_turns_the_mask_on():
    from quark_jax import gin_utils

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    gin_utils.parse([os.path.join(repo, "configs", "runs", "prune_recover.gin")],
                    ["MODEL_DIR='/tmp/unused'", "INIT_FROM='/tmp/unused_pruned'"])
    config = gin_utils.build_train_config()
    assert config.optimizer.keep_zero_weights and config.init_from == "/tmp/unused_pruned" and config.steps == 50
