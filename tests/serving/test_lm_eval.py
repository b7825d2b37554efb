"""lm-evaluation-harness against ``quark serve``: the issue's acceptance test.

``lm_eval --model local-completions`` scores the local multiple-choice task ``evals/serving_mc`` through the
server's ``/v1/completions`` (``echo`` + ``logprobs``) with its remote tokenizer (``/tokenize``,
``/tokenizer_info``), and must get exactly the accuracy, and to float noise the same per-choice
log-likelihoods, as scoring the same (context, continuation) pairs in-process with ``model.score``.
docs/lm_eval_wire_format.md describes the requests lm_eval sends.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np

from conftest import REPO
from serving.conftest import get_json

TASK = "serving_mc"
TASK_DIR = os.path.join("evals", TASK)  # relative: the task's data_files path is relative to the repository root
ITEMS = os.path.join(REPO, TASK_DIR, "items.jsonl")
TOLERANCE = 1e-4  # server and in-process scoring run differently shaped XLA programs: float noise only


def read_items() -> list[dict]:
    with open(ITEMS) as f:
        return [json.loads(line) for line in f if line.strip()]


def expected_requests(item: dict) -> list[tuple[str, str]]:
    """The (context, continuation) pairs lm_eval builds for one item: ``doc_to_text`` as context, and
    ``target_delimiter`` (" ") + each choice as continuation (0-shot, no description)."""
    context = f"Question: {item['question']}\nAnswer:"
    return [(context, " " + choice) for choice in item["choices"]]


def lm_eval_split(vocabulary, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm_eval's ``TemplateLM._encode_pair`` for a causal model: trailing spaces of the context move to the
    continuation, the whole text is encoded, and the continuation is what follows the encoded context."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, context_ids = list(vocabulary.encode(context + continuation)), list(vocabulary.encode(context))
    return context_ids, whole[len(context_ids):]


def run_lm_eval(url: str, model_name: str, output_path: str, cache_dir: str) -> subprocess.CompletedProcess:
    model_args = ",".join([
        f"model={model_name}", f"base_url={url}/v1/completions", "tokenizer_backend=remote",
        "num_concurrent=1", "max_retries=1", "max_length=256",  # the server's --max_seq_len
    ])
    command = [
        sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
        "--tasks", TASK, "--include_path", TASK_DIR, "--output_path", output_path, "--log_samples",
    ]
    # No network: the task's data is a local JSON file, and the tokenizer is the server's.
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": cache_dir,
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


def read_outputs(output_path: str) -> tuple[dict, list[dict]]:
    """The aggregated results and the per-document samples lm_eval wrote under ``output_path``."""
    results = glob.glob(os.path.join(output_path, "**", "results_*.json"), recursive=True)
    samples = glob.glob(os.path.join(output_path, "**", f"samples_{TASK}_*.jsonl"), recursive=True)
    assert len(results) == 1 and len(samples) == 1, (results, samples)
    with open(results[0]) as f:
        aggregated = json.load(f)
    with open(samples[0]) as f:
        per_doc = [json.loads(line) for line in f if line.strip()]
    return aggregated, sorted(per_doc, key=lambda s: s["doc_id"])


def sample_requests(sample: dict) -> list[tuple[str, str]]:
    """A logged sample's arguments ({"gen_args_0": {"arg_0": context, "arg_1": continuation}, ...}) in order."""
    keys = sorted(sample["arguments"], key=lambda k: int(k.rsplit("_", 1)[1]))
    return [(sample["arguments"][k]["arg_0"], sample["arguments"][k]["arg_1"]) for k in keys]


def served_logprobs(sample: dict) -> list[float]:
    """The log-likelihood lm_eval got for each choice (``resps``: [[[logprob, is_greedy]]] as strings)."""
    return [float(resp[0][0]) for resp in sample["resps"]]


def test_lm_eval_accuracy_through_the_server_equals_in_process_scoring(served_model, tmp_path):
    import quark_jax as qj

    model_name = get_json(served_model["url"] + "/v1/models")["data"][0]["id"]
    output_path = str(tmp_path / "lm_eval")
    result = run_lm_eval(served_model["url"], model_name, output_path, str(tmp_path / "hf_datasets"))
    assert result.returncode == 0, f"lm_eval failed:\n{result.stderr[-8000:]}"
    aggregated, samples = read_outputs(output_path)
    served_accuracy = aggregated["results"][TASK]["acc,none"]

    items = read_items()
    assert [s["doc_id"] for s in samples] == list(range(len(items)))
    model = qj.load(served_model["model_dir"])
    vocabulary = model.tokenizer
    # model.score puts the vocabulary's prompt prefix (an imported Llama's <s>) before each prompt, while
    # lm_eval's remote tokenizer never adds one: the comparison below holds for prefix-free vocabularies.
    assert not tuple(getattr(vocabulary, "prompt_prefix_ids", ()))

    correct, worst = 0, 0.0
    for item, sample in zip(items, samples):
        pairs = sample_requests(sample)
        assert pairs == expected_requests(item), "lm_eval built other requests than the test replicates"
        for context, continuation in pairs:
            # model.score encodes context and continuation separately, lm_eval splits the encoded whole:
            # the same tokens for these items (each continuation starts a new word).
            assert lm_eval_split(vocabulary, context, continuation) == (
                list(vocabulary.encode(context)), list(vocabulary.encode(continuation))), (context, continuation)
        scores = [s["logprob"] for s in model.score([p[0] for p in pairs], [p[1] for p in pairs])]
        served = served_logprobs(sample)
        assert np.allclose(served, scores, rtol=0, atol=TOLERANCE), (item["question"], served, scores)
        worst = max(worst, float(np.max(np.abs(np.subtract(served, scores)))))
        hit = int(np.argmax(scores)) == item["answer"]  # np.argmax as lm_eval: the first of equal scores wins
        assert float(sample["acc"]) == float(hit), (item["question"], served, scores)
        correct += hit

    assert served_accuracy == correct / len(items)
    print(f"{TASK}: accuracy {served_accuracy:.3f} through the server and in-process; "
          f"largest per-choice log-likelihood difference {worst:.2e}")


def test_items_are_well_formed():
    """Twenty items of four distinct choices, the answer an index among them, questions without the
    surrounding whitespace that lm_eval would move between context and continuation."""
    items = read_items()
    assert len(items) == 20
    for item in items:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4, item
        assert 0 <= item["answer"] < 4 and item["question"] == item["question"].strip(), item
