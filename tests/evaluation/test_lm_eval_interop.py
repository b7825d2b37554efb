"""lm-evaluation-harness through the ``quark`` model adapter agrees with quark's own harness, and ``is_greedy``
is computed for real (True exactly where greedy decoding reproduces the continuation)."""

from __future__ import annotations

import os

import pytest

lm_eval = pytest.importorskip("lm_eval")

import lm_eval.tasks  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

import quark_jax as qj  # noqa: E402
from quark_jax.evaluation import harness  # noqa: E402
from quark_jax.evaluation import lm_eval_adapter  # noqa: E402  (registers "quark")
from quark_jax.inference.generate import Request  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIMIT = 24  # stdlib_mc examples (x4 choices): enough to compare, small enough for a busy CI machine


@pytest.fixture(scope="module")
def model(trained_run):
    return qj.load(trained_run["model_dir"])


def test_quark_is_registered():
    from lm_eval.api.registry import get_model, model_registry

    assert get_model("quark") is lm_eval_adapter.QuarkLM
    assert "hf" in model_registry and "local-completions" in model_registry  # lm_eval's own are still there
    lm_eval_adapter.register()  # idempotent


def test_simple_evaluate_equals_the_quark_harness_on_stdlib_mc(trained_run, model, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(REPO)  # the lm-eval task's data_files are relative to the repository root
    out = lm_eval.simple_evaluate(
        model="quark", model_args=f"model_dir={trained_run['model_dir']},batch_size=32", tasks=["stdlib_mc"],
        task_manager=lm_eval.tasks.TaskManager(include_path=os.path.join(REPO, "evals", "lm_eval_tasks")),
        limit=LIMIT, log_samples=True,
    )
    ours = harness.evaluate(model, "stdlib_mc", batch_size=32, limit=LIMIT, progress=False)["tasks"]["stdlib_mc"]
    theirs = out["results"]["stdlib_mc"]
    assert ours["n"] == theirs["sample_len"] == LIMIT
    assert theirs["acc,none"] == ours["metrics"]["acc"]["value"]
    assert theirs["acc_norm,none"] == ours["metrics"]["acc_norm"]["value"]
    # And per choice: lm-eval's log-likelihoods are quark's (same tokenization, same compiled forward pass).
    samples = sorted(out["samples"]["stdlib_mc"], key=lambda s: s["doc_id"])
    for sample, record in zip(samples, ours["samples"]):
        lls = [float(resp[0][0]) for resp in sample["resps"]]
        assert lls == pytest.approx(record["loglikelihoods"], abs=1e-4)


def test_is_greedy_is_true_exactly_for_the_greedy_continuation(model):
    lm = lm_eval_adapter.QuarkLM(model=model, batch_size=8)
    prompts = ["def add(a, b):\n    return", "import os\nimport", "Q: What does `operator.add` do?\nA:",
               "x = 1\ny =", "class Point:\n    def"]
    contexts = [list(model.tokenizer.encode(p)) for p in prompts]
    pairs, expected = [], []
    greedy_runs = model.generator.generate_requests([Request(c, 6) for c in contexts])
    for context, completion in zip(contexts, greedy_runs):
        greedy_tokens = completion.tokens
        if len(greedy_tokens) < 2:
            continue  # the greedy run stopped (EOS) at once
        changed = list(greedy_tokens)
        changed[-1] = (changed[-1] + 7) % model.config.vocab_size  # another token at the last position
        pairs += [(context, greedy_tokens), (context, changed), (context, greedy_tokens[:1])]
        expected += [True, False, True]
    assert pairs, "every greedy run stopped at once: pick other prompts"
    results = lm._loglikelihood_tokens([(None, c, x) for c, x in pairs])
    assert [g for _, g in results] == expected
    # The log-likelihoods are the plain scoring path's.
    plain = model.generator.score_tokens([c for c, _ in pairs], [x for _, x in pairs])
    assert [lp for lp, _ in results] == pytest.approx([sum(p) for p in plain], abs=1e-4)

    # Through lm-eval's own request path (text in; lm-eval splits context and continuation itself): every
    # prefix of a greedy generation whose text re-tokenizes to the same ids is greedy; an arbitrary text is not
    # (its tokens are not the arg-max ones: checked against a greedy rerun of the same length).
    requests, expected = [], []
    for prompt, context, completion in zip(prompts, contexts, greedy_runs):
        for k in range(1, len(completion.tokens) + 1):
            text = model.tokenizer.decode(completion.tokens[:k])
            if lm._encode_pair(prompt, text) == (context, completion.tokens[:k]):
                requests.append((prompt, text))
                expected.append(True)
    assert requests, "no greedy prefix re-tokenizes to its own ids: pick other prompts"
    other = " the quick brown fox"
    _, other_ids = lm._encode_pair(prompts[0], other)
    rerun = model.generator.generate_requests([Request(contexts[0], len(other_ids))])[0].tokens
    requests.append((prompts[0], other))
    expected.append(rerun[: len(other_ids)] == other_ids)
    results = lm.loglikelihood([Instance("loglikelihood", {}, r, 0) for r in requests], disable_tqdm=True)
    assert [g for _, g in results] == expected and expected[-1] is False


def test_generate_until_equals_greedy_generation(model):
    lm = lm_eval_adapter.QuarkLM(model=model, batch_size=4)
    prompts = ["Q: Which module defines `dumps`?\nA:", "def clamp(x, lo, hi):\n", "import"]
    gen_kwargs = {"until": ["\n\n"], "max_gen_toks": 8, "do_sample": False}
    out = lm.generate_until([Instance("generate_until", {}, (p, dict(gen_kwargs)), 0) for p in prompts],
                            disable_tqdm=True)
    reference = model.generate(prompts, max_new_tokens=8, stop=["\n\n"])
    assert out == reference


def test_model_args_win_over_the_command_line_defaults(model):
    # lm_eval's CLI passes --batch_size (default 1) and --device next to model_args; they must not collide.
    lm = lm_eval_adapter.QuarkLM.create_from_arg_obj({"model": model, "batch_size": 32},
                                                     {"batch_size": 1, "max_batch_size": None, "device": "cpu"})
    assert lm.batch_size == 32 and lm.max_length == model.trained_context
    assert lm_eval_adapter.QuarkLM.create_from_arg_obj({"model": model}, {"batch_size": "auto"}).batch_size == 16
