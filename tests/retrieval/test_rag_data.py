"""The RAG-effect data: API questions whose answers their gold passage holds, split by module, and the SFT set
whose answers cite the gold passage's number in a prompt fitted with the real tokenizer."""

from __future__ import annotations

import random
import re

from quark_jax.data import chat, tokenizer
from quark_jax.data.api_questions import api_functions, api_questions
from quark_jax.data.splits import split_of
from quark_jax.retrieval.prompt import RAGTemplate
from quark_jax.retrieval.rag_data import api_passages, sft_records, write_jsonl


class FirstPassages:
    """A retriever that always answers the same three (mostly wrong) passages: the gold one must be added."""

    def __init__(self, hits):
        self.hits = hits

    def search(self, query, k=10):
        return self.hits[:k]


def test_questions_are_answered_by_their_gold_passage_and_split_by_module():
    passages = {p.id: p for p in api_passages()}
    functions = {f.qualname: f for f in api_functions()}
    for split in ("train", "validation"):
        questions = api_questions(split)
        assert {q.kind for q in questions} == {"module", "parameters"}
        for q in questions:
            function = functions[q.gold_id]
            assert split_of(function.relpath) == split == q.split
            header = passages[q.gold_id].text.splitlines()[0]  # the signature line
            if q.kind == "module":
                assert header.startswith(q.answer + "." + function.name + "(")
                assert sum(f.name == function.name for f in functions.values()) == 1  # unambiguous
            else:
                names = q.answer.split(", ")
                assert names == list(function.parameters)
                position = header.index("(") + 1  # every name in the signature, in order
                for name in names:
                    found = re.compile(rf"(?<![\w*]){re.escape(name)}\b").search(header, position)
                    assert found, (name, header)
                    position = found.end()
    train = {(q.gold_id, q.kind): (q.question, q.answer) for q in api_questions("train")}
    assert train["textwrap.dedent", "module"] == ("In which module is the function `dedent` defined?", "textwrap")
    assert train["posixpath.join", "parameters"] == ("What are the parameters of `posixpath.join`?", "a, *p")


def test_sft_records_cite_the_gold_passage_inside_the_budget(tmp_path):
    vocabulary = tokenizer.get_vocabulary()
    questions = random.Random(0).sample(api_questions("train"), 40)
    distractors = [p for p in api_passages() if p.id.startswith("shutil.")][:3]
    from quark_jax.retrieval.types import Hit

    hits = [Hit(p.id, p.text, 1.0, p.metadata) for p in distractors]
    records = sft_records(questions, FirstPassages(hits), vocabulary, budget_tokens=200, k=3,
                          closed_book_fraction=0.25, seed=0)
    closed = [r for r in records if len(r["messages"]) == 3 and "<<<SOURCES" not in r["messages"][1]["content"]]
    assert 0 < len(closed) < len(records)
    by_gold = {q.gold_id + q.kind: q for q in questions}
    for record in records:
        question = by_gold[record["gold_id"] + record["kind"]]
        system, user, assistant = record["messages"]
        prompt = chat.render(record["messages"][:2], add_generation_prompt=True)
        assert len(vocabulary.encode(prompt)) <= 200
        if record in closed:
            assert assistant["content"] == question.answer and system["content"] == RAGTemplate().closed_book_system
            continue
        answer, number = re.fullmatch(r"(.*) \[(\d+)\]", assistant["content"]).groups()
        assert answer == question.answer
        # The cited number heads the gold passage in the fenced block.
        assert f"[{number}] ({question.gold_id})\n" in user["content"]
    write_jsonl(records, str(tmp_path / "train.jsonl"))
    tokens, weights = chat.tokenize_conversation(records[0]["messages"], vocabulary)  # the SFT task's reading
    assert sum(weights) > 0 and len(tokens) == len(weights)
    assert (tmp_path / "train.jsonl").read_text().count("\n") == len(records)
