"""Speculative decoding is exact: greedy output equals the target's greedy output, sampled output follows the
target's distribution (and a wrong acceptance rule is caught by the same bound), tokenizers must match."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from inference_helpers import EOS, tiny_config, tiny_model

from quark_jax.inference.generate import Generator, Request
from quark_jax.inference.speculative import Draft, accept_drafts

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [20], [30, 31, 32, 33, 34]]


def _perturbed(params, scale, seed):
    """A copy of ``params`` with Gaussian noise of ``scale`` relative std: a draft that agrees with the target
    often but not always, so rounds accept some drafts and reject others."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [x + scale * jnp.std(x) * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, noisy)


def _expected(free, limit, eos, stop):
    """Plain greedy tokens and finish reason of a row, from a run without EOS: cut before the first ``eos``,
    after the first ``stop`` sequence or at ``limit``, whichever comes first."""
    for i in range(min(limit, len(free))):
        if free[i] == eos:
            return free[:i], "eos"
        if stop and free[max(0, i + 1 - len(stop)):i + 1] == stop:
            return free[:i + 1], "stop"
    return free[:limit], "length"


def test_greedy_speculation_equals_the_targets_greedy_output():
    target_graph, target_params = tiny_model()
    # A smaller draft (one layer instead of two, sharing the target's first layer and embedding) and a
    # same-size draft with perturbed weights: both agree with the target only sometimes, so rounds accept
    # some drafts and reject others and the rows of a batch advance by different amounts.
    small_graph, _ = tiny_model(tiny_config(num_layers=1))
    small_params = dict(target_params, blocks=jax.tree.map(lambda x: x[:1], target_params["blocks"]))
    drafts = {"smaller": Draft(small_graph, small_params, gamma=3),
              "perturbed": Draft(target_graph, _perturbed(target_params, 0.05, seed=2), gamma=3)}
    free = Generator(target_graph, target_params, eos_id=-1, compilation_cache=False).generate_requests(
        [Request(p, 16) for p in PROMPTS])
    # The end-of-sequence id is a token the target emits mid-row (row 1's 7th token), and row 3 has a stop
    # sequence from its own greedy continuation: both must end rows exactly where plain decoding ends them.
    eos, stop, limits = free[1].tokens[6], free[3].tokens[4:6], [16, 16, 5, 16]
    expected = [_expected(f.tokens, n, eos, stop if row == 3 else None) for row, (f, n) in enumerate(zip(free, limits))]
    assert expected[1][1] == "eos" and {"length"} < {reason for _, reason in expected}
    gen = Generator(target_graph, target_params, eos_id=eos, compilation_cache=False)
    requests = [Request(p, n, stop=[stop] if row == 3 else []) for row, (p, n) in enumerate(zip(PROMPTS, limits))]
    for name, draft in drafts.items():
        speculative = gen.generate_requests(requests, draft=draft)
        for row, (f, (tokens, reason), c) in enumerate(zip(free, expected, speculative)):
            assert (c.tokens, c.finish_reason) == (tokens, reason), (name, row)
            np.testing.assert_allclose(c.logprobs, f.logprobs[:len(tokens)], atol=1e-4)
        accepted = sum(c.speculation["accepted"] for c in speculative)
        examined = sum(c.speculation["examined"] for c in speculative)
        calls = sum(c.speculation["target_calls"] for c in speculative)
        assert 0 < accepted < examined, name
        assert calls < sum(len(t) + (r == "eos") for t, r in expected), name


def _tv(a, b):
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def _bound(num_samples, vocab):
    """A total-variation bound that an exact sampler exceeds with probability far below 1e-4: the expected
    TV of an empirical distribution is at most sqrt(V / N) / 2; five times that."""
    return 2.5 * np.sqrt(vocab / num_samples)


def test_acceptance_rule_reproduces_the_target_distribution_and_wrong_rules_do_not():
    vocab, gamma, n = 6, 2, 40_000
    k_p, k_q, k_draft, k_u, k_res, k_wrong = jax.random.split(jax.random.key(0), 6)
    p = jax.nn.softmax(2.0 * jax.random.normal(k_p, (gamma + 1, vocab)), axis=-1)
    q = jax.nn.softmax(2.0 * jax.random.normal(k_q, (gamma, vocab)), axis=-1)
    drafts = jax.random.categorical(k_draft, jnp.log(q), shape=(n, gamma)).astype(jnp.int32)
    uniform = jax.random.uniform(k_u, (n, gamma))
    p_rows, q_rows = jnp.broadcast_to(p, (n, *p.shape)), jnp.broadcast_to(q, (n, *q.shape))
    accepted, tokens = accept_drafts(p_rows, q_rows, drafts, uniform, jax.random.split(k_res, n))
    first = np.bincount(np.asarray(tokens[:, 0]), minlength=vocab) / n
    bound = _bound(n, vocab)
    assert _tv(first, p[0]) < bound
    # Position 2 given that position 1 accepted draft d: the emitted token follows p_2 (independent of d here).
    kept = np.asarray(accepted) >= 1
    second = np.bincount(np.asarray(tokens[kept, 1]), minlength=vocab) / kept.sum()
    assert _tv(second, p[1]) < _bound(int(kept.sum()), vocab)
    # The mean accepted count matches the exact acceptance probability β = Σ min(p, q) of the first position.
    beta = float(jnp.minimum(p[0], q[0]).sum())
    assert abs(float(np.mean(np.asarray(accepted) >= 1)) - beta) < 5 * np.sqrt(beta * (1 - beta) / n)

    # Wrong rules, judged by the same bound: always accepting emits q; resampling from p (not the residual)
    # after a rejection over-weights tokens the draft already proposes.
    always = np.bincount(np.asarray(drafts[:, 0]), minlength=vocab) / n
    assert _tv(always, p[0]) > bound
    from_p = jax.random.categorical(k_wrong, jnp.log(p[0]), shape=(n,))
    naive = np.where(np.asarray(accepted) >= 1, np.asarray(drafts[:, 0]), np.asarray(from_p))
    assert _tv(np.bincount(naive, minlength=vocab) / n, p[0]) > bound


def _exact_marginals(graphdef, params, prompt, vocab, steps):
    """The model's exact marginal distribution of each of the first ``steps`` sampled tokens (temperature 1),
    by enumerating every continuation (vocab ** (steps - 1) sequences in one forward pass)."""
    from flax import nnx

    model = nnx.merge(graphdef, params)
    continuations = np.array(list(itertools.product(range(vocab), repeat=steps - 1)), np.int32)
    tokens = np.concatenate([np.tile(prompt, (len(continuations), 1)), continuations], axis=1)
    positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    logits, _ = model(jnp.asarray(tokens), jnp.asarray(positions), jnp.ones_like(jnp.asarray(tokens)))
    probs = np.asarray(jax.nn.softmax(logits[:, len(prompt) - 1:], axis=-1), np.float64)  # [C steps V]
    marginals, prefix = [], np.ones(len(continuations))
    for t in range(steps):
        # prefix: the probability of the continuation's first t tokens (each sequence stands for V^(steps-1-t)
        # copies of that prefix, so divide by the multiplicity).
        weight = prefix / vocab ** (steps - 1 - t)
        marginals.append((weight[:, None] * probs[:, t]).sum(axis=0))
        if t < steps - 1:
            prefix = prefix * probs[np.arange(len(continuations)), t, continuations[:, t]]
    return marginals


def test_sampled_speculation_follows_the_target_distribution():
    vocab, steps, n = 8, 4, 4096
    config = tiny_config(vocab_size=vocab)
    target_graph, target_params = tiny_model(config)
    draft_graph, draft_params = tiny_model(tiny_config(vocab_size=vocab, d_model=32, num_layers=1), seed=3)
    prompt = [3, 5]
    gen = Generator(target_graph, target_params, eos_id=-1, compilation_cache=False)
    requests = [Request(prompt, steps, temperature=1.0, seed=s) for s in range(n)]
    out = gen.generate_requests(requests, draft=Draft(draft_graph, draft_params, gamma=2))
    samples = np.array([c.tokens for c in out])  # [n steps]
    exact = _exact_marginals(target_graph, target_params, prompt, vocab, steps)
    draft_exact = _exact_marginals(draft_graph, draft_params, prompt, vocab, steps)
    bound = _bound(n, vocab)
    for t in range(steps):  # token 0 from the prefill, 1..2 drafted or resampled, 3 a bonus or the next round
        empirical = np.bincount(samples[:, t], minlength=vocab) / n
        assert _tv(empirical, exact[t]) < bound, t
    # A rule that always accepted would emit the draft's distribution, which the bound tells apart.
    assert max(_tv(draft_exact[t], exact[t]) for t in range(1, steps)) > 2 * bound
    accepted = sum(c.speculation["accepted"] for c in out)
    assert 0 < accepted < sum(c.speculation["examined"] for c in out)


def test_a_prefix_and_gamma_0_are_refused_with_a_draft():
    graphdef, params = tiny_model()
    gen = Generator(graphdef, params, eos_id=EOS, compilation_cache=False)
    draft = Draft(graphdef, params, gamma=2)
    with pytest.raises(ValueError, match="speculative decoding takes no prefix cache"):
        gen.generate_requests([Request([5, 6], 4)], prefix=object(), draft=draft)
    with pytest.raises(ValueError, match="gamma=0: must be a whole number >= 1"):
        from quark_jax.inference.speculative import SpeculativeSpec

        SpeculativeSpec(8, EOS, gamma=0)


def test_a_draft_with_another_tokenizer_is_refused_naming_both(trained_run, tmp_path, capsys):
    import shutil

    from sentencepiece import sentencepiece_model_pb2

    import quark_jax as qj
    from quark_jax.cli import main

    target_dir = trained_run["model_dir"]
    other = tmp_path / "other_tokenizer"
    shutil.copytree(target_dir, other)
    # The same run with a tokenizer whose last piece spells something else: a different vocabulary.
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((other / "tokenizer.model").read_bytes())
    proto.pieces[-1].piece = "\u2581speculative"
    (other / "tokenizer.model").write_bytes(proto.SerializeToString())

    target = qj.load(target_dir)
    assert target.draft(target_dir, gamma=2).gamma == 2  # its own tokenizer: accepted
    with pytest.raises(ValueError, match=f"draft {other} and target {target_dir} use different tokenizers"):
        target.draft(str(other))
    code = main(["generate", "--model_dir", target_dir, "--draft_dir", str(other), "--prompt", "def "])
    err = capsys.readouterr().err
    assert code == 2 and f"draft {other} and target {target_dir} use different tokenizers" in err
    assert "Traceback" not in err


def test_cli_refuses_bad_draft_options_before_loading(tmp_path, capsys):
    from quark_jax.cli import main

    run = str(tmp_path)
    assert main(["serve", "--model_dir", run, "--draft_dir", run, "--gamma", "0"]) == 2
    assert "--gamma=0: must be >= 1" in capsys.readouterr().err
    assert main(["generate", "--model_dir", run, "--draft_dir", run, "--gamma", "0"]) == 2
    assert "--gamma=0: must be >= 1" in capsys.readouterr().err
    assert main(["generate", "--model_dir", run, "--draft_dir", run, "--num_beams", "2"]) == 2
    assert "--draft_dir with --num_beams 2: beam search is not speculative" in capsys.readouterr().err
