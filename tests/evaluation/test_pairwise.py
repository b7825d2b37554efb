"""Blind pairwise sheets: the page hides which model is which, and ratings map back to a win rate with a CI."""

import json
import re

import pytest

from quark_jax.evaluation import pairwise

PROMPTS = [f"Question {i}: what does function_{i} return?" for i in range(12)]
ANSWERS_A = [f"A thorough answer about function_{i} <b>& friends</b>." for i in range(12)]
ANSWERS_B = [f"meh {i}" for i in range(12)]


def _sheet(tmp_path, **kwargs):
    out = tmp_path / "sheet"
    info = pairwise.write_sheet(PROMPTS, ANSWERS_A, ANSWERS_B, str(out), seed=3, a_name="runs/model_alpha",
                                b_name="runs/model_beta", **kwargs)
    return out, info


def _displayed(page):
    """Item id -> {answer number: shown text}, read from the page the way a rater sees it."""
    shown = {}
    for item_id, body in re.findall(r'<section class="item" data-item="([^"]+)">(.*?)</section>', page, re.S):
        answers = dict(re.findall(r'<div class="answer" data-answer="(\d)"><h3>Answer \d</h3><pre>(.*?)</pre>', body,
                                  re.S))
        shown[item_id] = answers
    return shown


def _rate(out, page, prefer, path):
    """A simulated rater: ``prefer(text1, text2)`` returns "1", "2" or "tie" from the answers' text alone."""
    ratings = {item: prefer(texts["1"], texts["2"]) for item, texts in _displayed(page).items()}
    path.write_text(json.dumps({"sheet_id": json.loads((out / "key.json").read_text())["sheet_id"],
                                "ratings": ratings}))
    return pairwise.read_ratings(str(out), str(path))


def test_sheet_is_blind_and_self_contained(tmp_path):
    out, info = _sheet(tmp_path)
    page = (out / "sheet.html").read_text()
    assert info["items"] == 12 and (out / "key.json").exists()
    for secret in ("model_alpha", "model_beta", "runs/", "answer_a", "answer_b", "a_is"):
        assert secret not in page
    assert "http://" not in page and "https://" not in page and "<script src" not in page  # no CDN
    assert "ratings.json" in page and "new Blob" in page and 'id="json"' in page
    assert "&lt;b&gt;&amp; friends&lt;/b&gt;" in page  # answers are escaped, not rendered
    shown = _displayed(page)
    assert len(shown) == 12 and all(set(t) == {"1", "2"} for t in shown.values())
    # both orders occur, and the order is seeded
    first_is_a = ["thorough" in t["1"] for t in shown.values()]
    assert any(first_is_a) and not all(first_is_a)
    other = tmp_path / "again"
    pairwise.write_sheet(PROMPTS, ANSWERS_A, ANSWERS_B, str(other), seed=3)
    assert _displayed((other / "sheet.html").read_text()) == shown


def test_rater_preferring_a_gives_win_rate_one(tmp_path):
    out, _ = _sheet(tmp_path)
    page = (out / "sheet.html").read_text()
    result = _rate(out, page, lambda one, two: "1" if "thorough" in one else "2", tmp_path / "ratings.json")
    assert result["win_rate_a"] == 1.0 and result["a_wins"] == 12 and result["b_wins"] == 0
    low, high = result["ci"]
    assert 0.7 < low < 1.0 and high == pytest.approx(1.0)
    assert result["a_name"] == "runs/model_alpha" and "Wilson" in result["ci_method"]
    assert "runs/model_alpha beats runs/model_beta in 100.0% of 12 rated items" in pairwise.summarize(result)
    # and the opposite rater
    result = _rate(out, page, lambda one, two: "2" if "thorough" in one else "1", tmp_path / "r2.json")
    assert result["win_rate_a"] == 0.0 and result["ci"][0] == pytest.approx(0.0)


def test_ties_count_half_and_unrated_items_are_left_out(tmp_path):
    out, _ = _sheet(tmp_path)
    page = (out / "sheet.html").read_text()
    ids = list(_displayed(page))
    key = json.loads((out / "key.json").read_text())
    a_side = {item["id"]: str(item["a_is"]) for item in key["items"]}
    ratings = {ids[0]: a_side[ids[0]], ids[1]: "tie", ids[2]: "tie", ids[3]: "2" if a_side[ids[3]] == "1" else "1"}
    path = tmp_path / "ratings.json"
    path.write_text(json.dumps(ratings))  # a bare mapping works too
    result = pairwise.read_ratings(str(out), str(path))
    assert (result["a_wins"], result["b_wins"], result["ties"], result["rated"], result["unrated"]) == (1, 1, 2, 4, 8)
    assert result["win_rate_a"] == 0.5
    low, high = result["ci"]
    assert low < 0.5 < high and high - 0.5 == pytest.approx(0.5 - low)


def test_wilson_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    expected = stats.binomtest(7, 10).proportion_ci(confidence_level=0.95, method="wilson")
    assert pairwise.wilson_interval(7, 10) == pytest.approx((expected.low, expected.high))


@pytest.mark.parametrize("ratings, message", [
    ({"q999": "1"}, "unknown item 'q999'"),
    ({"q001": "A"}, "item 'q001' has rating 'A'"),
    ({"q002": 3}, "item 'q002' has rating 3"),
    ({}, "no item is rated"),
])
def test_malformed_ratings_name_the_item(tmp_path, ratings, message):
    out, _ = _sheet(tmp_path)
    path = tmp_path / "ratings.json"
    path.write_text(json.dumps({"ratings": ratings}))
    with pytest.raises(ValueError, match=re.escape(message)):
        pairwise.read_ratings(str(out), str(path))


def test_bad_files(tmp_path, capsys):
    out, _ = _sheet(tmp_path)
    path = tmp_path / "ratings.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        pairwise.read_ratings(str(out), str(path))
    path.write_text(json.dumps({"sheet_id": "another", "ratings": {}}))
    with pytest.raises(ValueError, match="ratings for sheet 'another'"):
        pairwise.read_ratings(str(out), str(path))
    assert pairwise.pairwise_read_main(str(out), str(path)) == 2
    assert "error:" in capsys.readouterr().err
    path.write_text(json.dumps({"q001": "tie"}))
    assert pairwise.pairwise_read_main(str(out), str(path)) == 0
    assert json.loads((out / "result.json").read_text())["ties"] == 1


def test_write_main_prints_next_step(tmp_path, capsys):
    assert pairwise.pairwise_write_main(["p"], ["a"], ["b"], str(tmp_path / "s"), a_name="x", b_name="y") == 0
    out = capsys.readouterr().out
    assert "sheet.html (1 items)" in out and "--read" in out
