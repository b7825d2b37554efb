"""Intent classification and routing accuracy on held-out requests.

    python bench/router.py [--run_dir INTENT_RUN | --init_from PRETRAINED_RUN --steps 60] [--composites 150]

1. The classifier: ``--run_dir`` an intent run (``configs/runs/intent.gin``), else one trained here for
   ``--steps`` from ``--init_from`` (default ``/tmp/ragbench/pretrain`` when it exists, else the tiny model
   pre-trained here for ``--pretrain_steps``) on the shipped intent set (``data/intents``).
2. Held-out intent accuracy: :class:`~quark_jax.inference.classifier.Classifier` on every row of
   ``data/intents/validation.jsonl`` (templates and stdlib modules never trained on), overall and per class,
   with the confusion matrix.
3. Held-out requests: every validation row (gold agent: the one of its intent,
   :data:`quark_jax.agents.router.INTENT_AGENTS`), plus ``--composites`` multi-part requests joined from two
   validation rows of different intents (a numbered list, "; then", or "Also,"): gold ``planning``, or
   ``refuse`` when a part is unsafe.
4. Routing accuracy (route.agent equals the gold agent) of three routers: the keyword rules alone, the
   classifier alone (no rule or entity bias), and the classifier with the cheap signals (keyword rules, entities
   of the standard-library knowledge graph); overall, on single and on composite requests, and per gold agent.

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_INIT = "/tmp/ragbench/pretrain"


def _train(gin_file: str, model_dir: str, steps: int, extra: list[str]) -> float:
    import quark_jax as qj

    overrides = [f"MODEL_DIR={model_dir!r}", f"TRAIN_STEPS={steps}", f"CHECKPOINT_PERIOD={steps}",
                 "quark_jax.TrainConfig.sample_prompts=()", "quark_jax.TrainConfig.progress_bar=False",
                 "quark_jax.TrainConfig.peak_flops_per_s=1e11", *extra]
    start = time.perf_counter()
    qj.Trainer.from_gin(os.path.join(REPO, gin_file), overrides).run()
    return time.perf_counter() - start


def composite_requests(rows: list[dict], count: int, seed: int = 0) -> list[dict]:
    """``count`` two-part requests from rows of different labels, with their gold agent."""
    rng = random.Random(seed)
    joins = (lambda a, b: f"Please do two things:\n1. {a}\n2. {b}", lambda a, b: f"{a.rstrip('.?!')}; then {b}",
             lambda a, b: f"{a} Also, {b[:1].lower() + b[1:]}")
    out = []
    while len(out) < count:
        a, b = rng.sample(rows, 2)
        if a["label"] == b["label"] or "\n" in a["text"] + b["text"]:
            continue
        gold = "refuse" if "unsafe" in (a["label"], b["label"]) else "planning"
        out.append({"text": rng.choice(joins)(a["text"], b["text"]), "gold": gold, "kind": "composite"})
    return out


def routing_figures(routes, requests) -> dict:
    """Accuracy overall, by kind (single / composite) and by gold agent."""
    correct = [r.agent == q["gold"] for r, q in zip(routes, requests)]
    figures = {"accuracy": round(sum(correct) / len(correct), 4)}
    for key in ("kind", "gold"):
        groups = collections.defaultdict(list)
        for c, q in zip(correct, requests):
            groups[q[key]].append(c)
        figures[f"by_{key}"] = {k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", help="a trained intent run (default: train one here)")
    parser.add_argument("--init_from", default=None, help=f"pre-trained run to warm-start from (default {DEFAULT_INIT})")
    parser.add_argument("--pretrain_steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--composites", type=int, default=150)
    parser.add_argument("--no_kg", action="store_true", help="skip the knowledge-graph signal")
    args = parser.parse_args()

    import quark_jax as qj
    from quark_jax.agents.router import INTENT_AGENTS, Router
    from quark_jax.data import intents

    timings, work = {}, tempfile.mkdtemp(prefix="router_bench_")
    run_dir = args.run_dir
    if run_dir is None:
        init_from = args.init_from or (DEFAULT_INIT if os.path.isdir(DEFAULT_INIT) else None)
        if init_from is None:
            init_from = os.path.join(work, "pretrain")
            timings["pretrain_s"] = round(_train("configs/runs/tiny_base.gin", init_from, args.pretrain_steps,
                                                 ["quark_jax.TrainConfig.eval_every=0"]), 1)
        run_dir = os.path.join(work, "intent")
        timings["train_s"] = round(_train("configs/runs/intent.gin", run_dir, args.steps, [
            f"INIT_FROM={init_from!r}", f"quark_jax.OptimizerConfig.learning_rate={args.learning_rate}",
            f"quark_jax.TrainConfig.eval_every={args.steps}"]), 1)

    classifier = qj.load_classifier(run_dir)
    rows = [json.loads(line) for line in open(intents.split_path("data/intents", "validation"))]
    start = time.perf_counter()
    predicted = classifier.predict([r["text"] for r in rows])
    timings["classify_s"] = round(time.perf_counter() - start, 2)
    per_class = {label: round(sum(p == label for p, r in zip(predicted, rows) if r["label"] == label)
                              / max(1, sum(r["label"] == label for r in rows)), 4) for label in classifier.labels}
    confusion = {a: {b: sum(1 for p, r in zip(predicted, rows) if r["label"] == a and p == b)
                     for b in classifier.labels} for a in classifier.labels}

    requests = [{"text": r["text"], "gold": INTENT_AGENTS[r["label"]], "kind": "single"} for r in rows]
    requests += composite_requests(rows, args.composites)
    kg = None
    if not args.no_kg:
        from quark_jax.knowledge.stdlib_graph import open_stdlib_graph

        start = time.perf_counter()
        kg = open_stdlib_graph()
        timings["kg_open_s"] = round(time.perf_counter() - start, 2)
    routers = {"rules": Router(), "classifier": Router(classifier, rule_bias=0.0, entity_bias=0.0),
               "classifier+rules" + ("+kg" if kg else ""): Router(classifier, kg_store=kg)}
    routing = {}
    for name, router in routers.items():
        start = time.perf_counter()
        routes = router.route_many([q["text"] for q in requests])
        routing[name] = routing_figures(routes, requests)
        routing[name]["ms_per_request"] = round(1000 * (time.perf_counter() - start) / len(requests), 3)
    print(json.dumps({
        "run_dir": run_dir, "step": classifier_step(run_dir),
        "intent_accuracy": round(sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows), 4),
        "intent_accuracy_per_class": per_class, "confusion": confusion,
        "held_out_rows": len(rows), "requests": dict(collections.Counter(q["kind"] for q in requests)),
        "routing": routing, "timings": timings,
    }))


def classifier_step(run_dir: str) -> int | None:
    from quark_jax import runs

    try:
        from quark_jax.training.checkpoint import Checkpointer

        checkpointer = Checkpointer(runs.resolve(run_dir), async_save=False)
        try:
            return checkpointer.latest_step()
        finally:
            checkpointer.close()
    except Exception:  # noqa: BLE001 -- the step is informative only
        return None


if __name__ == "__main__":
    main()
