"""console/upstream.py on its own: scrubbing is linear and bounded, a response body is
read only up to a cap, errors become Replies, and the paginator stops on a repeated
cursor or a list that never ends. A loopback listener stands in where the sandbox
cannot misbehave this way."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from console import upstream
from console.upstream import Outcome, PaginationError, scrub
from keys import formats


class Listener:
    """A loopback HTTP server answering every request with `respond(handler) ->
    (status, headers, body bytes)`. Records the request paths."""

    def __init__(self, respond):
        self.respond, self.paths = respond, []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                listener.paths.append(self.path)
                status, headers, body = listener.respond(self)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: that is the point

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    @property
    def origin(self):
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def allow_listeners(settings, monkeypatch):
    """Put every Listener's loopback origin on CONSOLE_ALLOWED_API_HOSTS, as an operator
    allow-lists the sandbox."""
    real_enter = Listener.__enter__

    def enter(self):
        settings.CONSOLE_ALLOWED_API_HOSTS = [*settings.CONSOLE_ALLOWED_API_HOSTS, self.origin]
        return real_enter(self)

    monkeypatch.setattr(Listener, "__enter__", enter)


def run_with_guard(fn, timeout=30):
    """Run fn in a thread; fail (instead of hanging the suite) if it does not finish."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"did not finish within {timeout} s"
    return box["value"]


def count_scanned(monkeypatch):
    """Count the characters scrub() examines token by token."""
    scanned = {"chars": 0}
    real = upstream.is_keyish

    def counting(token):
        scanned["chars"] += len(token)
        return real(token)

    monkeypatch.setattr(upstream, "is_keyish", counting)
    return scanned


HOSTILE = (("a-" * 1000 + " " + "0123456789abcdef" * 3 + " ") * 600)[: 1024 * 1024]


def test_scrub_examines_a_bounded_prefix_of_a_hostile_megabyte(monkeypatch):
    scanned = count_scanned(monkeypatch)
    cleaned = run_with_guard(lambda: scrub(HOSTILE))
    assert len(cleaned) <= upstream.MESSAGE_LENGTH
    assert 0 < scanned["chars"] <= upstream.MAX_SCAN_CHARS


def test_a_key_cut_by_the_scan_limit_leaves_no_fragment():
    secret = formats.generate()
    for offset in (10, len(secret) // 2, len(secret) - 5):
        text = " " * (upstream.MAX_SCAN_CHARS - offset) + secret + " tail"
        cleaned = scrub(text)
        assert secret[:offset][-12:] not in cleaned


def test_scrub_keeps_ordinary_words_and_removes_key_shapes():
    azure = formats.generate(formats.AZURE)
    text = f"Rate limit reached for gpt-4o in organization org-abc on requests {azure} sk-x {'Z' * 45}"
    cleaned = scrub(text)
    assert cleaned.startswith("Rate limit reached for gpt-4o in organization org-abc on requests [redacted]")
    assert azure not in cleaned and "sk-x" not in cleaned and "Z" * 45 not in cleaned


def test_the_result_fields_are_listed_once_on_the_reply():
    assert len(upstream.RESULT_FIELDS) == 14
    assert {"retry_after", "should_retry", "body", "outcome"}.isdisjoint(upstream.RESULT_FIELDS)


def target(url):
    return upstream.Target(secret=formats.generate(), base_url=url)


def test_a_hostile_megabyte_error_body_is_read_only_up_to_the_cap(settings, monkeypatch):
    settings.UPSTREAM_READ_TIMEOUT = 5.0
    body = json.dumps({"error": {"message": HOSTILE, "code": "server_error"}}).encode()
    scanned = count_scanned(monkeypatch)

    async def go(url):
        async with upstream.Pool() as pool:
            raw = await pool.http.get(url + "/models")
            return len(raw.content), await pool.probe(target(url))

    with Listener(lambda h: (500, {"Content-Type": "application/json"}, body)) as api:
        read, reply = run_with_guard(lambda: asyncio.run(go(api.url)))
    assert read == upstream.MAX_BODY_BYTES < len(body)
    assert reply.outcome == Outcome.SERVER_ERROR
    assert len(reply.message) <= upstream.MESSAGE_LENGTH
    assert scanned["chars"] <= upstream.MAX_SCAN_CHARS


def test_a_429_with_a_long_retry_after_and_no_retry_header_are_read(settings):
    answers = {
        "/v1/models": (
            429,
            {"retry-after": "120", "x-should-retry": "false", "Content-Type": "application/json"},
            b'{"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}',
        )
    }
    with Listener(lambda h: answers[h.path]) as api:
        reply = asyncio.run(probe_once(api.url))
    assert (reply.outcome, reply.retry_after, reply.should_retry) == (Outcome.RATE_LIMITED, 120.0, False)


async def probe_once(url):
    async with upstream.Pool() as pool:
        return await pool.probe(target(url))


# --- pagination ------------------------------------------------------------------------
def list_pages(pages):
    """A projects list whose page for cursor `after` is pages[after]."""

    def respond(handler):
        after = handler.path.partition("after=")[2].partition("&")[0] or None
        return 200, {"Content-Type": "application/json"}, json.dumps(pages[after]).encode()

    return respond


def fetch_projects(client, headers, cursor):
    params = {"limit": 2, "after": cursor} if cursor else {"limit": 2}
    return client.admin.organization.projects.with_raw_response.list(**params, extra_headers=headers)


async def walk(url, style="cursor", max_pages=10):
    admin = upstream.Target(secret=formats.generate(formats.ADMIN), base_url=url, is_admin=True)
    async with upstream.Pool() as pool:
        return [r async for r in pool.paginate(admin, fetch_projects, style=style, max_pages=max_pages)]


def page(ids, has_more, **extra):
    return {"object": "list", "data": [{"id": i} for i in ids], "has_more": has_more, **extra}


def test_the_paginator_follows_last_id_until_has_more_is_false():
    pages = {None: page(["p1", "p2"], True, last_id="p2"), "p2": page(["p3"], False, last_id="p3")}
    with Listener(list_pages(pages)) as api:
        replies = asyncio.run(walk(api.url))
    assert [i["id"] for r in replies for i in r.body["data"]] == ["p1", "p2", "p3"]
    assert all(r.outcome == Outcome.OK for r in replies)


def test_the_paginator_follows_next_page_for_page_style_lists():
    pages = {None: page(["a"], True, next_page="page_2"), "page_2": page(["b"], False, next_page=None)}
    with Listener(list_pages(pages)) as api:
        replies = asyncio.run(walk(api.url, style="page"))
    assert [r.body["data"][0]["id"] for r in replies] == ["a", "b"]


def test_the_paginator_refuses_a_repeated_cursor():
    pages = {None: page(["p1"], True, last_id="p1"), "p1": page(["p1"], True, last_id="p1")}
    with Listener(list_pages(pages)) as api, pytest.raises(PaginationError, match="repeated the cursor"):
        asyncio.run(walk(api.url))


def test_the_paginator_stops_at_its_page_cap():
    pages = {None: page(["p0"], True, last_id="p0")}
    pages.update({f"p{i}": page([f"p{i + 1}"], True, last_id=f"p{i + 1}") for i in range(10)})
    with Listener(list_pages(pages)) as api, pytest.raises(PaginationError, match="after 3 pages"):
        asyncio.run(walk(api.url, max_pages=3))


def test_the_paginator_stops_after_a_page_that_is_not_ok():
    def respond(handler):
        return 401, {"Content-Type": "application/json"}, b'{"error": {"code": "invalid_api_key", "message": "no"}}'

    with Listener(respond) as api:
        replies = asyncio.run(walk(api.url))
    assert [r.outcome for r in replies] == [Outcome.INVALID_KEY]
