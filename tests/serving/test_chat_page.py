"""The chat page (quark_jax/serving/static/chat.html) in a real headless Chromium driven by Selenium.

Two servers: a small stand-in written here (stdlib only, no model) whose event stream splits lines and
multi-byte characters across network writes and which answers errors, so the page's stream parsing is checked
byte for byte; and the real ``quark serve`` of the tiny model (``served_model``), end to end down to the
feedback log. Without Chromium the tests skip, except under CI (``CI`` set), where a missing browser fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import REPO


def _program(name: str) -> str:
    """Debian's /usr/bin/<name> (scripts/setup.sh installs chromium and chromium-driver there), else <name>
    on PATH; the /usr/bin path when neither exists (the skip or failure message names it)."""
    usual = f"/usr/bin/{name}"
    return usual if os.path.exists(usual) else shutil.which(name) or usual


CHROMIUM = _program("chromium")
CHROMEDRIVER = _program("chromedriver")
PAGE = os.path.join(REPO, "quark_jax", "serving", "static", "chat.html")
TIMEOUT_S = 120  # one reply of the tiny model on a busy CPU machine, with margin


def _browser_missing() -> str | None:
    """Why the browser cannot run here, or None."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(path) and os.access(path, os.X_OK))]
    return f"{' and '.join(missing)} not installed (bash scripts/setup.sh test installs them)" if missing else None


@pytest.fixture(scope="module")
def driver():
    """Headless Chromium through chromedriver; skipped when absent, except on CI."""
    reason = _browser_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the browser tests: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_script_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


# --- helpers that read the page ----------------------------------------------------------------------------------

def wait_for(condition, timeout: float = TIMEOUT_S, every: float = 0.05, what: str = "condition"):
    """Polls ``condition()`` until it returns something truthy (returned); fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


# One round trip per sample: the text of the newest reply, whether it ended, and the chunk count the page records.
SAMPLE_JS = """
const replies = document.querySelectorAll('.assistant');
const el = replies[replies.length - 1];
if (!el) return null;
return {text: el.querySelector('.content').textContent, done: el.dataset.done, id: el.dataset.id || null,
        chunks: window.quarkChunks, count: replies.length};
"""


def send_message(driver, text: str, max_tokens: int | None = None, temperature: float | None = None):
    """Fills the settings and the message box, clicks send; returns the index of the reply it starts."""
    from selenium.webdriver.common.by import By

    for field, value in (("max_tokens", max_tokens), ("temperature", temperature)):
        if value is not None:
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(str(value))
    before = len(driver.find_elements(By.CSS_SELECTOR, ".assistant"))
    driver.find_element(By.ID, "message").send_keys(text)
    driver.find_element(By.ID, "send").click()
    return before


def follow_reply(driver, index: int, timeout: float = TIMEOUT_S) -> tuple[dict, list[int]]:
    """Samples the reply ``index`` as fast as the driver allows until ``data-done="true"``; returns the last
    sample and the distinct text lengths seen while it streamed."""
    lengths: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sample = driver.execute_script(SAMPLE_JS)
        if sample and sample["count"] > index:
            if not lengths or lengths[-1] != len(sample["text"]):
                lengths.append(len(sample["text"]))
            if sample["done"] == "true":
                return sample, lengths
        time.sleep(0.01)
    pytest.fail(f"the reply did not finish within {timeout:.0f} s (lengths seen: {lengths})")


def reply_element(driver, index: int):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, ".assistant")[index]


def save_png(driver, tmp_path, name: str) -> str:
    """A screenshot under $QUARK_TEST_ARTIFACTS (kept by CI) or the test's tmp dir; checked to be a PNG."""
    folder = os.environ.get("QUARK_TEST_ARTIFACTS") or str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    assert driver.save_screenshot(path)
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000, path
    return path


# --- a stand-in server: exact control over how the stream is cut ------------------------------------------------

# The reply, in the content deltas the stand-in sends: multi-byte characters (2, 3 and 4 bytes in UTF-8).
DELTAS = ["Grüße", " aus", " 東京", " 🌍!", "\nzweite Zeile"]
STUB_ID = "chatcmpl-stub-1"


def _events() -> bytes:
    """The SSE body of one streamed reply: role chunk, content chunks, finish chunk, usage chunk, [DONE]."""
    def chunk(delta, finish=None):
        return {"id": STUB_ID, "object": "chat.completion.chunk", "created": 1, "model": "stub",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant"})] + [chunk({"content": d}) for d in DELTAS] + [chunk({}, "stop")]
    chunks.append({"id": STUB_ID, "object": "chat.completion.chunk", "created": 1, "model": "stub", "choices": [],
                   "usage": {"prompt_tokens": 3, "completion_tokens": len(DELTAS), "total_tokens": 3 + len(DELTAS)}})
    text = "".join(f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return text.encode("utf-8")


def _cut_points(body: bytes) -> list[int]:
    """Where the stand-in splits the body between writes: inside every multi-byte character (after its first
    byte) and in the middle of every ``data:`` line, so no write ends on a clean boundary."""
    cuts = {i + 1 for i, byte in enumerate(body) if byte >= 0xC0}  # after a UTF-8 lead byte
    cuts |= {m.start() + 3 for m in re.finditer(rb"data: ", body)}  # "dat" | "a: ..."
    return sorted(cuts)


class _StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # no Content-Length on the stream: the body ends when the connection closes
    requests: list[dict] = []      # the JSON bodies received, in order (class-level: one stand-in per test run)

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def _json(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/":
            with open(PAGE, "rb") as f:
                data = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error", "param": None,
                                       "code": None}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, **body})
        if self.path == "/v1/feedback":
            return self._json(200, {"ok": True})
        if body["messages"][-1]["content"] == "fail please":
            return self._json(400, {"error": {"message": "max_tokens is too large", "type": "invalid_request_error",
                                              "param": "max_tokens", "code": None}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        data, start = _events(), 0
        for cut in _cut_points(data) + [len(data)]:
            self.wfile.write(data[start:cut])
            self.wfile.flush()
            start = cut
            time.sleep(0.005)  # separate TCP writes, so the browser sees separate chunks


@pytest.fixture
def stub_server():
    _StubHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_page_parses_a_stream_cut_anywhere_and_shows_errors(driver, stub_server, tmp_path):
    """Lines and UTF-8 characters split across network writes arrive whole; history, settings and the
    system prompt go into the request; thumbs-down posts feedback; a 4xx shows its message in the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(stub_server + "/")
    wait_for(lambda: driver.find_element(By.ID, "model-name").text == "stub", 30, what="the model name")
    driver.find_element(By.ID, "system").send_keys("Be brief.")
    index = send_message(driver, "Hallo", max_tokens=7, temperature=0.3)
    sample, _ = follow_reply(driver, index, 30)
    assert sample["text"] == "".join(DELTAS)
    assert sample["id"] == STUB_ID and sample["chunks"] == len(DELTAS)
    reply = reply_element(driver, index)
    assert re.search(r"TTFT \d+ ms", reply.find_element(By.CSS_SELECTOR, ".stats").text)
    assert f"{len(DELTAS)} tokens" in reply.find_element(By.CSS_SELECTOR, ".stats").text  # from usage

    request = _StubHandler.requests[-1]
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert request["model"] == "stub" and request["max_tokens"] == 7 and request["temperature"] == 0.3
    assert request["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hallo"}]

    # Enter sends; the history (with the first reply) goes along.
    driver.find_element(By.ID, "message").send_keys("Noch einmal" + Keys.ENTER)
    follow_reply(driver, index + 1, 30)
    assert [m["content"] for m in _StubHandler.requests[-1]["messages"]] == [
        "Be brief.", "Hallo", "".join(DELTAS), "Noch einmal"]

    down = reply.find_element(By.CSS_SELECTOR, ".thumbs-down")
    down.click()
    wait_for(lambda: "sent" in down.get_attribute("class"), 10, what="the thumbs-down to be marked")
    assert not down.is_enabled() and not reply.find_element(By.CSS_SELECTOR, ".thumbs-up").is_enabled()
    assert {"path": "/v1/feedback", "id": STUB_ID, "rating": -1} in _StubHandler.requests

    index = send_message(driver, "fail please")
    follow_reply(driver, index, 30)
    error = reply_element(driver, index).find_element(By.CSS_SELECTOR, ".error")
    assert "max_tokens is too large" in error.text
    save_png(driver, tmp_path, "chat_page_stub.png")


# --- the real server ---------------------------------------------------------------------------------------------

def read_feedback(log_dir: str) -> list[dict]:
    path = os.path.join(log_dir, "feedback.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_chat_page_streams_from_quark_serve_and_logs_feedback(driver, served_model, tmp_path):
    """The page from ``quark serve``: a reply streams in over several chunks, its stats show the time to
    first token, thumbs-up lands in ``LOG_DIR/feedback.jsonl`` with the reply's id and text, and a refused
    request shows the server's error."""
    import urllib.request

    from selenium.webdriver.common.by import By

    url = served_model["url"]
    with urllib.request.urlopen(url + "/", timeout=30) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/html")
    driver.get(url + "/")
    wait_for(lambda: driver.find_element(By.ID, "model-name").text not in ("", "loading model…"), 30,
             what="the model name")
    assert driver.find_elements(By.CSS_SELECTOR, ".error") == []

    # The tiny model may end a sampled reply on EOS at once; a few tries give one that streams several tokens.
    for attempt in range(4):
        message = f"Write a short story about a lighthouse, part {attempt + 1}."
        index = send_message(driver, message, max_tokens=64, temperature=1.0)
        sample, lengths = follow_reply(driver, index)
        if sample["chunks"] > 1:
            break
    reply = reply_element(driver, index)
    assert reply.find_elements(By.CSS_SELECTOR, ".error") == []
    assert sample["text"] and sample["id"].startswith("chatcmpl-"), sample
    # Streaming: more than one content chunk arrived (the page counts them); on a fast machine the sampling
    # above may still see the text at its final length only, so the observed lengths are only reported.
    assert sample["chunks"] > 1, (sample, lengths)
    stats = reply.find_element(By.CSS_SELECTOR, ".stats").text
    assert re.search(r"TTFT \d+ ms", stats) and "tokens/s" in stats, stats

    up = reply.find_element(By.CSS_SELECTOR, ".thumbs-up")
    up.click()
    wait_for(lambda: "sent" in up.get_attribute("class"), 30, what="the thumbs-up to be marked")
    assert not up.is_enabled()
    entry = wait_for(
        lambda: next((e for e in read_feedback(served_model["log_dir"])
                      if e["id"] == sample["id"] and e["rating"] == 1), None),
        10, what=f"a feedback entry for {sample['id']}")
    assert {"id", "rating", "time", "prompt", "choices"} <= set(entry)
    # The store's entry (quark_jax.serving.feedback): the last user message and the texts by choice index.
    assert entry["prompt"] == message and entry["choices"][entry.get("choice", 0)] == sample["text"], entry

    # A request the server refuses (more tokens than --max_seq_len 256) shows the server's message in the page.
    index = send_message(driver, "One more, please.", max_tokens=1000)
    follow_reply(driver, index)
    errors = reply_element(driver, index).find_elements(By.CSS_SELECTOR, ".error")
    assert errors and "max_tokens" in errors[0].text, [e.text for e in errors]
    save_png(driver, tmp_path, "chat_page_served.png")
    print(f"observed text lengths while streaming: {lengths}; chunks: {sample['chunks']}; stats: {stats}")
