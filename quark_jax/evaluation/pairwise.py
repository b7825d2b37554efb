"""Blind side-by-side human evaluation of two models: write a rating sheet, read the ratings back as a win rate.

:func:`write_sheet` writes ``out_dir/sheet.html``, a self-contained static page (no scripts or styles from
elsewhere; open it from disk) showing each prompt with the two models' answers as "Answer 1" and "Answer 2" in a
seeded random order per item, and radio buttons 1 / 2 / tie. Its button downloads the ratings as
``ratings.json`` (a Blob); the same JSON is shown in a text box to copy, for browsers that block downloads from
files. Nothing in the page says which model wrote which answer: that is in ``out_dir/key.json``, which the rater
should not see.

:func:`read_ratings` maps the ratings back through the key: the win rate of model A over model B with ties
counting half, the counts, and a Wilson score interval for the win rate (computed with the tie-adjusted rate
``(wins + ties / 2) / rated`` and ``n = rated`` items; ties make the true variance smaller, so the interval is
conservative then). Unrated items are counted and left out.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import random
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

KEY_FORMAT = "quark-pairwise-key/1"
RATING_VALUES = ("1", "2", "tie")


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for a proportion ``successes / n``; ``successes`` may be fractional
    (ties as half)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, n={n}]")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _sheet_id(title: str, items: list[dict[str, Any]]) -> str:
    blob = json.dumps([title, [[i["id"], i["prompt"], i["answer_a"], i["answer_b"], i["a_is"]] for i in items]])
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def write_sheet(prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str], out_dir: str,
                seed: int = 0, title: str = "Which answer is better?", a_name: str = "A", b_name: str = "B",
                item_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Write ``out_dir/sheet.html`` (for the rater) and ``out_dir/key.json`` (for you).

    ``answers_a[i]`` and ``answers_b[i]`` answer ``prompts[i]``; each item's order on the page is drawn from
    ``random.Random(seed)``. ``a_name``/``b_name`` (e.g. the run directories) go only into the key. ``item_ids``
    default to ``q001``, ``q002``, ... Returns ``{"sheet": path, "key": path, "items": n, "sheet_id": id}``.
    """
    n = len(prompts)
    if not (len(answers_a) == len(answers_b) == n):
        raise ValueError(f"{n} prompts but {len(answers_a)} answers from A and {len(answers_b)} from B")
    if n == 0:
        raise ValueError("nothing to compare: no prompts")
    width = max(3, len(str(n)))
    ids = [str(i) for i in item_ids] if item_ids is not None else [f"q{i + 1:0{width}d}" for i in range(n)]
    if len(ids) != n or len(set(ids)) != n:
        raise ValueError("item_ids must be unique, one per prompt")
    rng = random.Random(seed)
    items = [{"id": ids[i], "a_is": 1 if rng.random() < 0.5 else 2, "prompt": str(prompts[i]),
              "answer_a": str(answers_a[i]), "answer_b": str(answers_b[i])} for i in range(n)]
    sheet_id = _sheet_id(title, items)
    os.makedirs(out_dir, exist_ok=True)
    key = {"format": KEY_FORMAT, "sheet_id": sheet_id, "title": title, "seed": seed, "a_name": a_name,
           "b_name": b_name, "items": items}
    key_path = os.path.join(out_dir, "key.json")
    with open(key_path, "w", encoding="utf-8") as f:
        json.dump(key, f, indent=1, ensure_ascii=False)
    sheet_path = os.path.join(out_dir, "sheet.html")
    with open(sheet_path, "w", encoding="utf-8") as f:
        f.write(_render(title, sheet_id, items))
    return {"sheet": sheet_path, "key": key_path, "items": n, "sheet_id": sheet_id}


def _render(title: str, sheet_id: str, items: list[dict[str, Any]]) -> str:
    esc = html.escape
    sections = []
    for number, item in enumerate(items, 1):
        first, second = ((item["answer_a"], item["answer_b"]) if item["a_is"] == 1
                         else (item["answer_b"], item["answer_a"]))
        name = esc(item["id"], quote=True)
        radios = "".join(
            f'<label><input type="radio" name="r-{name}" value="{value}"> {label}</label>'
            for value, label in (("1", "Answer 1 is better"), ("tie", "Tie"), ("2", "Answer 2 is better")))
        sections.append(
            f'<section class="item" data-item="{name}">\n'
            f'<h2>Item {number} of {len(items)} <small>({esc(item["id"])})</small></h2>\n'
            f'<div class="prompt"><h3>Prompt</h3><pre>{esc(item["prompt"])}</pre></div>\n'
            f'<div class="answers">'
            f'<div class="answer" data-answer="1"><h3>Answer 1</h3><pre>{esc(first)}</pre></div>'
            f'<div class="answer" data-answer="2"><h3>Answer 2</h3><pre>{esc(second)}</pre></div></div>\n'
            f'<fieldset data-item="{name}"><legend>Your rating</legend>{radios}</fieldset>\n'
            f'</section>')
    body = "\n".join(sections)
    return _PAGE.replace("__TITLE__", esc(title)).replace("__SHEET_ID__", esc(sheet_id, quote=True)) \
        .replace("__COUNT__", str(len(items))).replace("__ITEMS__", body)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 1rem auto; padding: 0 1rem; color: #222; }
.item { border-top: 2px solid #ccc; padding: 0.5rem 0 1rem; }
.answers { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
pre { white-space: pre-wrap; word-wrap: break-word; background: #f6f6f6; padding: 0.6rem; border-radius: 4px;
      font-size: 0.9rem; }
fieldset { border: 1px solid #bbb; }
fieldset label { margin-right: 1.5rem; }
#done { position: sticky; bottom: 0; background: #fff; border-top: 2px solid #888; padding: 0.6rem 0; }
textarea { width: 100%; height: 8rem; font-family: monospace; }
small { color: #777; font-weight: normal; }
</style></head>
<body>
<h1>__TITLE__</h1>
<p>For each prompt, read both answers and choose the better one, or "Tie" when neither is better. The two answers
come from two different systems in an order shuffled for each item. When you are done, press
<b>Download ratings.json</b> and send that file back (or copy the text below into a file named ratings.json).
Nothing is sent anywhere from this page.</p>
__ITEMS__
<div id="done">
<p><span id="count">0</span> of __COUNT__ items rated.
<button id="download" type="button">Download ratings.json</button></p>
<details><summary>Ratings as text (copy into ratings.json if the download does not work)</summary>
<textarea id="json" readonly></textarea></details>
</div>
<script>
(function () {
  "use strict";
  var SHEET = "__SHEET_ID__";
  var STORE = "quark-pairwise-" + SHEET;
  function ratings() {
    var out = {};
    document.querySelectorAll("fieldset[data-item]").forEach(function (fs) {
      var checked = fs.querySelector("input:checked");
      if (checked) { out[fs.getAttribute("data-item")] = checked.value; }
    });
    return out;
  }
  function text() { return JSON.stringify({sheet_id: SHEET, ratings: ratings()}, null, 1); }
  function update() {
    var r = ratings();
    document.getElementById("count").textContent = Object.keys(r).length;
    document.getElementById("json").value = text();
    try { localStorage.setItem(STORE, JSON.stringify(r)); } catch (e) { /* storage may be off for files */ }
  }
  try {
    var saved = JSON.parse(localStorage.getItem(STORE) || "{}");
    Object.keys(saved).forEach(function (id) {
      document.querySelectorAll("fieldset[data-item] input").forEach(function (input) {
        if (input.name === "r-" + id && input.value === saved[id]) { input.checked = true; }
      });
    });
  } catch (e) { /* nothing saved */ }
  document.addEventListener("change", update);
  document.getElementById("download").addEventListener("click", function () {
    var blob = new Blob([text()], {type: "application/json"});
    var url = URL.createObjectURL(blob);
    var link = document.createElement("a");
    link.href = url;
    link.download = "ratings.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 1000);
  });
  update();
})();
</script>
</body></html>
"""


def _load_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def read_ratings(out_dir: str, ratings_path: str, confidence: float = 0.95) -> dict[str, Any]:
    """Score a rater's ``ratings.json`` against ``out_dir/key.json``.

    The file is ``{"sheet_id": ..., "ratings": {item_id: "1" | "2" | "tie"}}`` as the sheet writes it (a bare
    ``{item_id: rating}`` mapping also works). Returns ``win_rate_a`` (A's wins plus half the ties, over the rated
    items), ``ci`` (Wilson score interval at ``confidence``), ``ci_method``, the counts ``a_wins``, ``b_wins``,
    ``ties``, ``rated``, ``unrated``, ``items``, and the model names. An unknown item id, a rating other than
    1/2/tie, a file from another sheet or no rated item at all raises ValueError naming it.
    """
    key_path = os.path.join(out_dir, "key.json")
    key = _load_json(key_path, "the sheet's key")
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT:
        raise ValueError(f"{key_path}: not a pairwise key written by write_sheet")
    data = _load_json(ratings_path, "ratings file")
    if not isinstance(data, dict):
        raise ValueError(f"{ratings_path}: expected a JSON object of ratings")
    if "ratings" in data and isinstance(data["ratings"], dict):
        sheet_id = data.get("sheet_id")
        if sheet_id is not None and sheet_id != key["sheet_id"]:
            raise ValueError(f"{ratings_path}: ratings for sheet {sheet_id!r}, but {key_path} is sheet "
                             f"{key['sheet_id']!r}")
        ratings = data["ratings"]
    else:
        ratings = data
    a_is = {item["id"]: item["a_is"] for item in key["items"]}
    a_wins = b_wins = ties = 0
    for item_id, value in ratings.items():
        if item_id not in a_is:
            raise ValueError(f"{ratings_path}: unknown item {item_id!r} (not in this sheet)")
        rating = str(value).strip().lower() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        if rating not in RATING_VALUES:
            raise ValueError(f"{ratings_path}: item {item_id!r} has rating {value!r}, expected one of 1, 2, tie")
        if rating == "tie":
            ties += 1
        elif int(rating) == a_is[item_id]:
            a_wins += 1
        else:
            b_wins += 1
    rated = a_wins + b_wins + ties
    if rated == 0:
        raise ValueError(f"{ratings_path}: no item is rated")
    score = a_wins + ties / 2
    low, high = wilson_interval(score, rated, confidence)
    return {"a_name": key["a_name"], "b_name": key["b_name"], "win_rate_a": score / rated, "ci": [low, high],
            "confidence": confidence, "ci_method": "Wilson score interval, ties counted as half a win, n = rated items",
            "a_wins": a_wins, "b_wins": b_wins, "ties": ties, "rated": rated, "unrated": len(a_is) - rated,
            "items": len(a_is)}


def summarize(result: dict[str, Any]) -> str:
    """One line for the terminal: ``A beats B in 70.0% of 20 rated items (95% CI 48.1-85.5%; 12 wins, 6 losses,
    2 ties; 0 unrated)``."""
    low, high = result["ci"]
    return (f"{result['a_name']} beats {result['b_name']} in {100 * result['win_rate_a']:.1f}% of {result['rated']} "
            f"rated items ({100 * result['confidence']:.0f}% CI {100 * low:.1f}-{100 * high:.1f}%; "
            f"{result['a_wins']} wins, {result['b_wins']} losses, {result['ties']} ties; "
            f"{result['unrated']} unrated)")


def pairwise_read_main(out_dir: str, ratings_path: str) -> int:
    """``quark eval pairwise --read DIR --ratings FILE``: print the summary, write ``DIR/result.json``; exit code
    0, or 2 with a one-line error for a malformed file."""
    import sys

    try:
        result = read_ratings(out_dir, ratings_path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with open(os.path.join(out_dir, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(summarize(result))
    return 0


def pairwise_write_main(prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str], out_dir: str,
                        a_name: str = "A", b_name: str = "B", seed: int = 0,
                        title: str = "Which answer is better?") -> int:
    """``quark eval pairwise --a RUN --b RUN --task T --output DIR`` after the answers are generated: write the
    sheet and key, print where they are and what to do next; exit code 0."""
    info = write_sheet(prompts, answers_a, answers_b, out_dir, seed=seed, title=title, a_name=a_name,
                       b_name=b_name)
    print(f"wrote {info['sheet']} ({info['items']} items): give it to the rater (it does not say which model is "
          f"which)\nkeep {info['key']} to yourself; read the ratings back with: quark eval pairwise --read {out_dir} "
          f"--ratings ratings.json")
    return 0
