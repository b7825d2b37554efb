"""RAG with a real trained model (the session's tiny run): the reranker against an independent forward pass,
the pipeline end to end with an in-test retriever, and the ``quark rag`` error paths in-process."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import quark_jax as qj
from quark_jax import cli
from quark_jax.data import tokenizer as tok
from quark_jax.retrieval.prompt import CLOSE_FENCE, OPEN_FENCE
from quark_jax.retrieval.rag import RAGPipeline
from quark_jax.retrieval.rerank import QUESTION_SEPARATOR, LogLikelihoodReranker
from quark_jax.retrieval.types import Hit

PASSAGES = [
    Hit("json.dumps", "json.dumps(obj, skipkeys, indent)\nSerialize obj to a JSON formatted str.", 0.0),
    Hit("os.path.join", "os.path.join(a, *p)\nJoin two or more pathname components.", 0.0),
    Hit("math.sqrt", "math.sqrt(x)\nReturn the square root of x.", 0.0),
    Hit("re.compile", "re.compile(pattern, flags)\nCompile a regular expression pattern.", 0.0),
]


class WordOverlap:
    """A reference retriever: passages ranked by how many distinct lower-cased words they share with the query."""

    def __init__(self, hits):
        self.hits = hits

    def search(self, query: str, k: int = 10) -> list[Hit]:
        words = set(re.findall(r"\w+", query.lower()))
        scored = [Hit(h.id, h.text, float(len(words & set(re.findall(r"\w+", h.text.lower())))), h.metadata)
                  for h in self.hits]
        return sorted(scored, key=lambda h: -h.score)[:k]


@pytest.fixture(scope="module")
def model(trained_run):
    return qj.load(trained_run["model_dir"])


def _reference_score(model, passage: str, question: str) -> float:
    """log p(question | passage + separator) per question token from one full forward pass (no scorer, no
    padding): log-softmax of the logits, summed over the question's tokens."""
    prompt = list(model.tokenizer.encode(passage + QUESTION_SEPARATOR))
    answer = list(model.tokenizer.encode(question))
    sequence = jnp.asarray([prompt + answer], jnp.int32)
    positions = jnp.arange(sequence.shape[1], dtype=jnp.int32)[None]
    logits, _ = nnx.merge(model.graphdef, model.params)(sequence, positions, jnp.ones_like(sequence))
    logprobs = np.asarray(jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1))
    total = sum(logprobs[len(prompt) + i - 1, token] for i, token in enumerate(answer))
    return float(total) / len(answer)


def test_reranker_scores_equal_an_independent_forward_pass_and_order_follows(model):
    question = "What does json.dumps return?"
    reranker = LogLikelihoodReranker(model, batch_size=3)  # two scorer calls: 3 + 1 pairs
    hits = WordOverlap(PASSAGES).search(question, 4)
    reranked = reranker.rerank(question, hits)
    expected = {h.id: _reference_score(model, h.text, question) for h in hits}
    for hit in reranked:
        assert abs(hit.score - expected[hit.id]) < 1e-4, (hit.id, hit.score, expected[hit.id])
        assert hit.metadata["retrieval_score"] == next(h.score for h in hits if h.id == hit.id)
    assert [h.id for h in reranked] == sorted(expected, key=lambda i: -expected[i])
    assert sorted(h.id for h in reranked) == sorted(h.id for h in hits)


def test_pipeline_end_to_end_prompt_budget_generation_and_citations(model):
    budget, new = 100, 8
    pipeline = RAGPipeline(model, WordOverlap(PASSAGES), budget_tokens=budget, k=3, max_new_tokens=new)
    question = "What does json.dumps do with obj?"
    retrieved = WordOverlap(PASSAGES).search(question, 3)
    answer = pipeline.answer(question)
    prompt = answer.prompt
    assert len(model.tokenizer.encode(prompt)) <= budget
    # The fenced block holds the shown passages in retrieval order, numbered, before the question.
    shown = [h.id for h in answer.sources]
    assert shown and shown == [h.id for h in retrieved][: len(shown)]
    block = prompt[prompt.index(OPEN_FENCE): prompt.index(CLOSE_FENCE)]
    positions = [block.index(f"[{n}] ({hit_id})") for n, hit_id in enumerate(shown, 1)]
    assert positions == sorted(positions)
    assert prompt.index(CLOSE_FENCE) < prompt.index(f"Question: {question}") and prompt.endswith(tok.ASSISTANT)
    # The answer is the compiled generator's greedy continuation of exactly that prompt.
    reference = model.generate([prompt], max_new_tokens=new, stop=[tok.END])[0].strip()
    assert answer.text == reference
    # Citations: each [n] written maps to the n-th shown passage; numbers beyond them are counted.
    numbers = list(dict.fromkeys(int(n) for n in re.findall(r"\[(\d+)\]", answer.text)))
    assert [h.id for h in answer.citations] == [shown[n - 1] for n in numbers if 1 <= n <= len(shown)]
    assert answer.unknown_citations == [n for n in numbers if not 1 <= n <= len(shown)]
    # With reranking, the passages are shown in the reranker's order.
    reranked = RAGPipeline(model, WordOverlap(PASSAGES), budget_tokens=budget, k=3, rerank=True,
                           max_new_tokens=new).answer(question)
    order = [h.id for h in LogLikelihoodReranker(model).rerank(question, retrieved)]
    shown_reranked = [h.id for h in reranked.sources]
    assert shown_reranked and shown_reranked == [i for i in order if i in shown_reranked]
    assert [h.score for h in reranked.sources] == sorted((h.score for h in reranked.sources), reverse=True)
    closed = pipeline.answer_without_retrieval(question)
    assert OPEN_FENCE not in closed.prompt and closed.sources == [] and closed.citations == []
    assert closed.text == model.generate([closed.prompt], max_new_tokens=new, stop=[tok.END])[0].strip()


def test_pipeline_refuses_a_budget_beyond_the_trained_context(model):
    with pytest.raises(ValueError) as e:
        RAGPipeline(model, WordOverlap(PASSAGES), budget_tokens=model.trained_context, max_new_tokens=8)
    assert str(e.value) == (f"budget_tokens={model.trained_context} + max_new_tokens=8 exceeds the "
                            f"{model.trained_context}-token context the model was trained on; lower one of them")


def test_cli_error_paths(trained_run, tmp_path, capsys):
    run = trained_run["model_dir"]
    cases = [
        (["--model_dir", run, "--index", str(tmp_path), "--question", "  "], "quark rag: --question is empty"),
        (["--model_dir", run, "--index", str(tmp_path), "--question", "q", "--k", "0"],
         "quark rag: --k=0: must be >= 1"),
        (["--model_dir", run, "--index", str(tmp_path / "nope"), "--question", "q"],
         f"quark rag: --index {tmp_path / 'nope'}: no such directory"),
        (["--model_dir", str(tmp_path / "norun"), "--index", str(tmp_path), "--question", "q"], "quark rag: "),
    ]
    for argv, message in cases:
        assert cli.main(["rag", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["rag", "--index", str(tmp_path), "--question", "q"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --model_dir" in capsys.readouterr().err


def test_cli_answers_with_sources_as_json(trained_run, model, tmp_path, capsys, monkeypatch):
    import json

    from quark_jax.retrieval import rag_cli

    class StoredIndex:  # stands in for quark_jax.retrieval.index.Index (another module), searched as the CLI does
        def search(self, query, k, mode=None):
            assert mode == "lexical"
            return WordOverlap(PASSAGES).search(query, k)

    monkeypatch.setattr(rag_cli, "load_index", lambda path, embedder_dir: StoredIndex())
    monkeypatch.setattr(cli, "_load_for_generation", lambda args: model)  # the module's loaded run, no reload
    question = "What does json.dumps do with obj?"
    code = cli.main(["rag", "--model_dir", trained_run["model_dir"], "--index", str(tmp_path), "--question", question,
                     "--k", "3", "--budget", "100", "--max_new_tokens", "8", "--mode", "lexical", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    expected = RAGPipeline(model, WordOverlap(PASSAGES), budget_tokens=100, k=3, max_new_tokens=8).answer(question)
    assert result["answer"] == expected.text and result["prompt"] == expected.prompt
    assert [s["id"] for s in result["sources"]] == [h.id for h in expected.sources]
    assert result["citations"] == [h.id for h in expected.citations]
