"""The chat page in a real browser: Playwright for Python driving Debian's Chromium (`apt-get install
chromium fonts-noto-cjk`, passed as executable_path; never a browser download) against the real
waitress server over the stub retriever of tests/serve_stub.py.

Skips, naming what is missing, only where the playwright package or a Chromium binary cannot be
found (`make test` installs both: playwright from requirements-dev.txt, Chromium with apt-get when
run as root; DIALOGBERT_CHROMIUM=/path/to/chromium picks another binary)."""
from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

import pytest

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (it is pinned in requirements-dev.txt, "
                                  "which `make test` installs)")
from playwright.sync_api import expect  # noqa: E402

from serve_stub import start  # noqa: E402  (tests/ is on sys.path: pytest's rootdir-relative imports)

pytestmark = pytest.mark.xdist_group("browser")   # one worker, one browser for the whole file

APT_LOG = Path(__file__).resolve().parents[1] / ".venv" / "apt-browser.log"
KO, EN = "좋아요, 내일 봐요!", "Sounds good, see you tomorrow!"   # the stub's two replies
XSS = ["<img src=x onerror=alert(1)>", "<script>alert(2)</script>"]


def chromium_path() -> str | None:
    for path in (os.environ.get("DIALOGBERT_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                 "/usr/bin/chromium"):
        if path and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        why = (f"; what apt-get said when `make test` tried is in {APT_LOG}" if APT_LOG.is_file() else
               "; `make test` installs it with apt-get when run as root on Debian")
        pytest.skip(f"no Chromium binary (looked for $DIALOGBERT_CHROMIUM, chromium, chromium-browser on PATH and "
                    f"/usr/bin/chromium: `apt-get install chromium fonts-noto-cjk`{why})")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True)
        yield b
        b.close()


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except Exception:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server():
    """The stub service without a rate limit, shared by the tests that leave it running."""
    base, proc = start("")
    yield base
    _stop(proc)


class Page:
    """A fresh browser context (its own sessionStorage) and page, recording what the page did: the
    bodies it posted to /api/chat, the dialogs it opened, its script errors and console errors."""

    def __init__(self, browser, **context):
        self.context = browser.new_context(**{"locale": "en-US", **context})
        self.page = self.context.new_page()
        self.chats, self.dialogs, self.errors, self.console = [], [], [], []
        self.page.on("request", lambda r: self.chats.append(r.post_data_json) if r.url.endswith("/api/chat") else None)
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        self.me, self.bot = self.page.locator(".row.me .bubble"), self.page.locator(".row.bot .bubble")
        self.err = self.page.locator("#log .err")

    def send(self, text: str) -> None:
        self.page.fill("#m", text)
        self.page.press("#m", "Enter")

    def storage(self, key: str):
        return self.page.evaluate("k => sessionStorage.getItem(k)", key)

    def clean(self) -> None:
        """No script error, no Content-Security-Policy violation, no console error, no dialog."""
        assert self.errors == [] and self.console == [] and self.dialogs == []


def _fulfil(status: int, body: dict):
    """A route handler answering as the service would, without reaching it."""
    return lambda route: route.fulfill(status=status, json=body)


@pytest.fixture
def page(browser):
    p = Page(browser)
    yield p
    p.context.close()


def test_korean_and_english_replies_kept_on_reload_and_reset(server, page):
    p = page.page
    p.goto(server)
    # labelled for screen readers: the message list is a polite live log, input and buttons have names
    log = p.get_by_role("log", name="Conversation")
    expect(log).to_have_attribute("aria-live", "polite")
    box, send = p.get_by_label("Message"), p.get_by_role("button", name="Send")
    expect(box).to_be_focused()
    expect(p.get_by_role("button", name=re.compile("new chat", re.I))).to_be_visible()

    page.send("내일 몇 시에 만날까?")
    expect(page.bot).to_have_text([KO])
    box.fill("What time do we meet tomorrow?")
    send.click()
    expect(page.bot).to_have_text([KO, EN])
    sid = page.storage("dialogbert-sid")
    assert sid and [c["session_id"] for c in page.chats] == [None, sid]   # one session for both
    expect(p.locator(".cands")).to_have_count(0)                         # no candidates without ?debug=1

    p.reload()
    expect(p.locator("#log .bubble")).to_have_text(["내일 몇 시에 만날까?", KO, "What time do we meet tomorrow?", EN])
    page.send("그럼 내일 봐")
    expect(page.bot).to_have_count(3)
    assert page.chats[-1]["session_id"] == sid                              # the same conversation goes on

    p.goto(server + "/?debug=1")                                          # the debug switch: scores shown
    expect(p.locator("#debug-badge")).to_be_visible()
    page.send("debug please")
    expect(p.locator(".cands")).to_have_count(1)
    expect(p.locator(".cands")).to_contain_text("0.800  " + EN)

    with p.expect_request("**/api/reset") as reset:
        p.get_by_role("button", name=re.compile("new chat", re.I)).click()
    assert reset.value.post_data_json == {"session_id": sid}
    expect(p.locator("#log > *")).to_have_count(0)
    assert page.storage("dialogbert-sid") is None and page.storage("dialogbert-log") is None
    p.reload()
    expect(p.locator("#log > *")).to_have_count(0)
    page.send("hello again")
    expect(page.bot).to_have_text([EN])
    assert page.chats[-1]["session_id"] is None                            # a new conversation
    page.clean()


def test_markup_is_shown_as_text(server, page):
    p = page.page
    p.goto(server)
    for i, s in enumerate(XSS):
        page.send(s)
        expect(page.me.nth(i)).to_have_text(s)
        expect(page.bot.nth(i)).to_have_text(f"you sent: {s}")   # the bot's text, markup included
    p.wait_for_timeout(300)   # time for an injected image to fail and fire its onerror
    assert p.locator("#log img, #log script, #log iframe").count() == 0
    assert "&lt;img src=x" in page.me.nth(0).inner_html()
    page.clean()


def test_phone_size(server, browser):
    page = Page(browser, viewport={"width": 375, "height": 667}, device_scale_factor=2, is_mobile=True, has_touch=True)
    p = page.page
    try:
        p.goto(server)
        for n, text in enumerate(["ㅋ" * 300, "x" * 300, "https://example.com/" + "a" * 200, "내일 몇 시에 만날까? " * 10]):
            page.send(text)                           # long unbroken lines must wrap, not widen the page
            expect(page.bot).to_have_count(n + 1)
        width = p.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]")
        assert max(width[:2]) <= width[2] == 375, width                  # no horizontal scroll
        log = p.evaluate("(l => [l.scrollWidth, l.clientWidth])(document.getElementById('log'))")
        assert log[0] <= log[1], log
        for sel in ["#m", "#send", "#reset"]:
            b = p.locator(sel).bounding_box()
            assert b and b["x"] >= 0 and b["x"] + b["width"] <= 375 and b["y"] >= 0 and b["y"] + b["height"] <= 667, (sel, b)
        expect(p.locator("#m")).to_be_in_viewport()
        assert p.locator("#m").bounding_box()["width"] >= 200
        page.clean()
    finally:
        page.context.close()


def test_waiting_shows_typing_and_blocks_a_second_send(server, page):
    p = page.page
    p.goto(server)
    typing, send = p.locator("#typing"), p.locator("#send")
    expect(typing).to_be_hidden()
    with p.expect_response("**/api/chat") as first:
        page.send("slow reply please")                # the stub answers after 2 s
        expect(typing).to_be_visible()
        expect(typing).to_have_attribute("role", "status")
        expect(send).to_be_disabled()
        expect(p.locator("#log")).to_have_attribute("aria-busy", "true")
        page.send("and a second one")                 # Enter while waiting: nothing is sent
        expect(p.locator("#m")).to_have_value("and a second one")
    sid = first.value.json()["session_id"]
    expect(page.bot).to_have_text([EN])
    expect(typing).to_be_hidden()
    expect(send).to_be_enabled()
    assert len(page.chats) == 1 and page.chats[0]["session_id"] is None
    p.press("#m", "Enter")                           # now it goes, with the first reply's session id
    expect(page.bot).to_have_count(2)
    assert [c["session_id"] for c in page.chats] == [None, sid]
    page.clean()


def test_friendly_errors_with_retry(browser):
    """A Korean browser; each error in the language of the message that met it, never a developer's text."""
    base, proc = start("3/minute")
    page = Page(browser, locale="ko-KR")
    p = page.page
    try:
        p.goto(base)
        expect(p.locator("#send")).to_have_text("보내기")
        retry = p.locator("#log .err button.retry")

        p.route("**/api/chat", lambda route: route.abort())          # the network fails once
        page.send("안녕, 잘 지냈어?")
        expect(page.err).to_contain_text("서버에 연결할 수 없어요")
        expect(retry).to_have_text("다시 시도")
        expect(p.locator(".row.me.failed")).to_have_count(1)
        p.unroute("**/api/chat")
        retry.click()                                                   # request 1 of 3
        expect(page.bot).to_have_text([KO])
        expect(page.err).to_have_count(0)
        expect(p.locator(".row.me.failed")).to_have_count(0)

        p.route("**/api/chat", lambda route: route.fulfill(status=502, content_type="text/html",
                                                         body="<html><body>502 Bad Gateway</body></html>"))
        page.send("are you there?")                                     # a proxy's page, not JSON
        expect(page.err).to_contain_text("didn't come through")
        expect(retry).to_have_text("Try again")
        for status, error in [(413, "the message is longer than 1000 characters"),
                              (400, "the message holds a character that is not text")]:
            p.unroute("**/api/chat")
            p.route("**/api/chat", _fulfil(status, {"error": error}))
            page.send("이건 보낼 수 없는 메시지")
            expect(page.err).to_contain_text("너무 길어요" if status == 413 else "보낼 수 없어요")
            expect(retry).to_have_count(0)                              # sending it again would not help:
            expect(p.locator("#m")).to_have_value("이건 보낼 수 없는 메시지")   # it is back in the box
            p.fill("#m", "")
        p.unroute("**/api/chat")

        for n, text in [(2, "하나"), (3, "둘")]:                         # requests 2 and 3 of 3
            page.send(text)
            expect(page.bot).to_have_count(n)
        page.send("셋, 이건 너무 많아")                                   # the service's own 429
        expect(page.err).to_contain_text("메시지를 너무 많이 보냈어요")
        expect(page.err).to_contain_text(re.compile(r"\d+초 뒤에"))       # Retry-After, in seconds
        expect(retry).to_be_disabled()                                  # until that time has passed

        p.reload()            # what was answered is still there; what was not (the failed rows) is not
        expect(p.locator("#log .bubble")).to_have_text(["안녕, 잘 지냈어?", KO, "하나", KO, "둘", KO])

        _stop(proc)                                                     # the server goes away
        page.send("Hello, is anyone there?")
        expect(page.err).to_contain_text("Can't reach the server")
        expect(retry).to_be_enabled()
        body = p.inner_text("body")
        for raw in ["TypeError", "Failed to fetch", "JSON", "Unexpected token", "Bad Gateway", "longer than", "U+"]:
            assert raw not in body
        assert page.errors == [] and page.dialogs == []
    finally:
        page.context.close()
        _stop(proc)
