"""The one door to OpenAI and Azure OpenAI.

Every call to an upstream API goes through this module, in two layers:

- `Pool.send(target, call)` — sending: client construction on one shared connection
  pool (`make_http_client`), explicit timeouts, no SDK retries (callers own their retry
  policy), an X-Client-Request-Id on every request, a cap on how much of a response body
  is read, and the translation of whatever happened into a `Reply` with an `Outcome` and
  a scrubbed message. It never raises for upstream trouble.
- What a caller asks: `Pool.probe(target)` (is this key alive?), and `Pool.paginate(…)`
  for the list endpoints that usage ingestion and organization sync walk.

Secrets pass through in memory only; nothing here logs, stores or raises them.
"""

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx2
import openai
from django.conf import settings
from django.db import models

from console import destinations

# A response body is read up to this many bytes and a message scrubbed up to this many
# characters: an upstream (or something posing as one) cannot make a worker read or
# scan megabytes. The OpenAI error bodies and a models list are far below both.
MAX_BODY_BYTES = 256 * 1024
MAX_SCAN_CHARS = 4096
MESSAGE_LENGTH = 500
DEFAULT_MAX_PAGES = 1000

log = logging.getLogger(__name__)


class Outcome(models.TextChoices):
    OK = "ok", "OK"
    INVALID_KEY = "invalid_key", "Invalid key"
    AUTH_UNKNOWN = "auth_unknown", "Auth failed (not the key)"
    PERMISSION_DENIED = "permission_denied", "Permission denied"
    NOT_FOUND = "not_found", "Not found"
    QUOTA_EXHAUSTED = "quota_exhausted", "Quota exhausted"
    RATE_LIMITED = "rate_limited", "Rate limited (alive)"
    SERVER_ERROR = "server_error", "Server error"
    TIMEOUT = "timeout", "Timeout"
    NETWORK_ERROR = "network_error", "Network error"
    MALFORMED_RESPONSE = "malformed_response", "Malformed response"
    UNEXPECTED_STATUS = "unexpected_status", "Unexpected status"
    SKIPPED_CIRCUIT_OPEN = "skipped_circuit_open", "Skipped (circuit open)"
    DECRYPTION_FAILED = "decryption_failed", "Secret could not be decrypted"
    # Not sent: the destination is not (or no longer) on CONSOLE_ALLOWED_API_HOSTS, or its
    # name resolved to an internal address (console/destinations.py). Not a host failure.
    DESTINATION_REFUSED = "destination_refused", "Destination refused"
    # The console itself failed on this key (a bug, an unparseable URL, Redis…): the
    # key's state is unknown, and the rest of its batch went on.
    ERROR = "error", "Probe error"

    @classmethod
    def failures(cls):
        """Outcomes that count against a key (the key, or the API for it, is not usable)."""
        return {o.value for o in cls} - {cls.OK, cls.RATE_LIMITED, cls.SKIPPED_CIRCUIT_OPEN}

    @classmethod
    def transient(cls):
        """Worth another try after a pause."""
        return {cls.RATE_LIMITED, cls.SERVER_ERROR, cls.TIMEOUT, cls.NETWORK_ERROR}

    @classmethod
    def host_failures(cls):
        """Say the API host is in trouble, whatever the key: these feed the circuit breaker."""
        return {cls.SERVER_ERROR, cls.TIMEOUT, cls.NETWORK_ERROR}


def host_of(provider, base_url="", azure_endpoint=""):
    """The API host (with its port, if any) a key's calls go to: the circuit breaker's
    unit. Shared by Target and keys.models.Circuit (which may not import keys.probe)."""
    url = azure_endpoint if provider == "azure" else (base_url or settings.OPENAI_BASE_URL)
    return urlsplit(url).netloc or url


@dataclass
class Target:
    """What a call needs to reach one key's API. `secret` is the plaintext: keep the
    object short-lived, and never log or pickle it."""

    secret: str = field(repr=False)
    provider: str = "openai"
    base_url: str = ""
    azure_endpoint: str = ""
    azure_api_version: str = ""
    organization: str = ""
    project: str = ""
    is_admin: bool = False

    def host(self):
        return host_of(self.provider, self.base_url, self.azure_endpoint)


@dataclass
class Reply:
    """What one upstream call came to. Holds no secret material. The fields named in
    RESULT_FIELDS are what a probe result stores; `retry_after`, `should_retry` and
    `body` are for the caller only."""

    outcome: str
    http_status: int | None = None
    error_code: str = ""
    message: str = ""
    request_id: str = ""
    client_request_id: str = ""
    duration_ms: int = 0
    ratelimit_limit_requests: int | None = None
    ratelimit_limit_tokens: int | None = None
    ratelimit_remaining_requests: int | None = None
    ratelimit_remaining_tokens: int | None = None
    ratelimit_reset_requests: str = ""
    ratelimit_reset_tokens: str = ""
    openai_organization: str = ""
    processing_ms: int | None = None
    # Seconds the API asked us to wait at least (retry-after-ms / retry-after), or None.
    retry_after: float | None = None
    # False when the API said x-should-retry: false; None when it said nothing.
    should_retry: bool | None = None
    # The parsed JSON body of a successful call (None otherwise).
    body: object = field(default=None, repr=False)


CALLER_ONLY_FIELDS = ("outcome", "retry_after", "should_retry", "body")
# The 14 fields a ProbeResult stores from a Reply, listed once.
RESULT_FIELDS = tuple(f for f in Reply.__dataclass_fields__ if f not in CALLER_ONLY_FIELDS)


# --- scrubbing ------------------------------------------------------------------------
# Characters a key-shaped token is made of (the 401 echo masks with * and …).
TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-*.…")
ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
HEX = frozenset("0123456789abcdefABCDEF")


def is_keyish(token):
    """Does this run of token characters look like (part of) an API key? `sk-…`, a legacy
    key (…T3BlbkFJ…), a 32-hex Azure key, or 40+ letters and digits in a row."""
    if "sk-" in token or ("T3BlbkFJ" in token and len(token) >= 28):
        return True
    run = hex_run = 0
    for ch in token + " ":
        if ch in ALNUM:
            run += 1
            hex_run = hex_run + 1 if ch in HEX and hex_run == run - 1 else hex_run
            if run >= 40:
                return True
            continue
        if run == 32 and hex_run == 32:
            return True
        run = hex_run = 0
    return False


def scrub(message, secret=""):
    """Remove anything key-shaped (the 401 body echoes a masked key) and the secret itself.

    Linear in its input, and the input is cut to MAX_SCAN_CHARS first: a hostile body
    cannot cost more than a few thousand steps. A token cut by that limit is dropped
    whole, so no fragment of a key survives the cut."""
    text = str(message or "")
    if len(text) > MAX_SCAN_CHARS:
        text = text[:MAX_SCAN_CHARS].rstrip("".join(TOKEN_CHARS))
    if secret:
        text = text.replace(secret, "[redacted]")
        if len(secret) >= 8:
            text = text.replace(secret[-8:], "[redacted]")
    out, token = [], []
    for ch in text + " ":
        if ch in TOKEN_CHARS:
            token.append(ch)
            continue
        if token:
            word = "".join(token)
            out.append("[redacted]" if is_keyish(word) else word)
            token = []
        out.append(ch)
    return "".join(out[:-1])[:MESSAGE_LENGTH]


# --- headers and status ---------------------------------------------------------------
def _int(value):
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def _retry_after(headers):
    """The minimum wait the API asked for, in seconds (retry-after-ms first), or None."""
    ms = headers.get("retry-after-ms")
    if ms is not None and _int(ms) is not None:
        return max(_int(ms), 0) / 1000
    seconds = headers.get("retry-after")
    if seconds is not None:
        try:
            return max(float(seconds), 0.0)
        except ValueError:
            return None  # an HTTP date: rare on these APIs; the backoff applies
    return None


def _read_headers(reply, headers):
    reply.request_id = headers.get("x-request-id", "")[:100]
    reply.ratelimit_limit_requests = _int(headers.get("x-ratelimit-limit-requests"))
    reply.ratelimit_limit_tokens = _int(headers.get("x-ratelimit-limit-tokens"))
    reply.ratelimit_remaining_requests = _int(headers.get("x-ratelimit-remaining-requests"))
    reply.ratelimit_remaining_tokens = _int(headers.get("x-ratelimit-remaining-tokens"))
    reply.ratelimit_reset_requests = headers.get("x-ratelimit-reset-requests", "")[:30]
    reply.ratelimit_reset_tokens = headers.get("x-ratelimit-reset-tokens", "")[:30]
    reply.openai_organization = headers.get("openai-organization", "")[:100]
    reply.processing_ms = _int(headers.get("openai-processing-ms"))
    reply.retry_after = _retry_after(headers)
    if headers.get("x-should-retry", "").strip().lower() == "false":
        reply.should_retry = False


def classify_status(status, code, message="", provider="openai"):
    """Outcome for an HTTP error status and the error body's `code` (or `type`).

    Only OpenAI's 401 `invalid_api_key` says the key itself is dead; any other 401 (IP
    allow-list, organization membership) is "auth_unknown". Azure answers a bad key with
    401, code "401" and "Access denied due to invalid subscription key …"."""
    if status == 401:
        if code == "invalid_api_key":
            return Outcome.INVALID_KEY
        if provider == "azure" and "invalid subscription key" in (message or "").lower():
            return Outcome.INVALID_KEY
        return Outcome.AUTH_UNKNOWN
    if status == 403:
        return Outcome.PERMISSION_DENIED
    if status == 404:
        return Outcome.NOT_FOUND
    if status == 408:
        return Outcome.TIMEOUT
    if status == 429:
        return Outcome.QUOTA_EXHAUSTED if code == "insufficient_quota" else Outcome.RATE_LIMITED
    if status >= 500:
        return Outcome.SERVER_ERROR
    return Outcome.UNEXPECTED_STATUS


def is_list(body):
    return isinstance(body, dict) and body.get("object") == "list" and isinstance(body.get("data"), list)


def _error_fields(body):
    """(code, type, message) from an error body, whatever its shape."""
    error = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "", "", ""
    return tuple(str(error.get(k) or "") for k in ("code", "type", "message"))


# --- the connection pool --------------------------------------------------------------
class CappedStream(httpx2.AsyncByteStream):
    """A response body that ends after `limit` bytes, whatever the server sends."""

    def __init__(self, inner, limit):
        self.inner, self.limit = inner, limit

    async def __aiter__(self):
        left = self.limit
        async for chunk in self.inner:
            if left <= 0:
                break
            yield chunk[:left]
            left -= len(chunk)

    async def aclose(self):
        await self.inner.aclose()


def body_cap(limit):
    """A response hook that stops reading a body after `limit` bytes."""

    async def cap_response_body(response):
        response.stream = CappedStream(response.stream, limit)

    return cap_response_body


def make_http_client(timeout, max_connections, max_body_bytes=MAX_BODY_BYTES):
    """The one place the pool's HTTP client is built (its transport, limits, hooks).

    Its transport is console.destinations.GuardedTransport: every request is checked
    against CONSOLE_ALLOWED_API_HOSTS again, and every connection goes to an address that
    was resolved and checked right then (no DNS rebinding), whatever a row says."""
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx2.AsyncClient(
        timeout=timeout,
        transport=destinations.GuardedTransport(limits=limits),
        event_hooks={"response": [body_cap(max_body_bytes)]},
    )


class PaginationError(Exception):
    """A list endpoint misbehaved: it repeated a cursor or never stopped."""


class Pool:
    """One shared httpx2 connection pool for many keys, and the SDK clients on it.

    Use as `async with Pool() as pool:`; clients for each base URL are built once and
    copied per key with `with_options(api_key=…)`, which keeps the same pool.
    """

    def __init__(self, max_connections=None, connect_timeout=None, read_timeout=None, max_body_bytes=MAX_BODY_BYTES):
        self.timeout = httpx2.Timeout(
            read_timeout or settings.UPSTREAM_READ_TIMEOUT,
            connect=connect_timeout or settings.UPSTREAM_CONNECT_TIMEOUT,
        )
        self.http = make_http_client(
            self.timeout, max_connections or settings.UPSTREAM_MAX_CONNECTIONS, max_body_bytes=max_body_bytes
        )
        self._clients = {}

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.http.aclose()

    def client_for(self, target):
        """An SDK client for the target's API, without a key yet."""
        if target.provider == "azure":
            version = target.azure_api_version or settings.AZURE_DEFAULT_API_VERSION
            cache_key = ("azure", target.azure_endpoint, version)
            if cache_key not in self._clients:
                self._clients[cache_key] = openai.AsyncAzureOpenAI(
                    api_key="placeholder",
                    azure_endpoint=target.azure_endpoint,
                    api_version=version,
                    max_retries=0,
                    timeout=self.timeout,
                    http_client=self.http,
                )
        else:
            base_url = target.base_url or settings.OPENAI_BASE_URL
            cache_key = ("openai", base_url)
            if cache_key not in self._clients:
                self._clients[cache_key] = openai.AsyncOpenAI(
                    api_key="placeholder",
                    base_url=base_url,
                    max_retries=0,
                    timeout=self.timeout,
                    http_client=self.http,
                )
        return self._clients[cache_key]

    def keyed_client(self, target):
        """The target's client carrying its key (admin keys as admin_api_key)."""
        client = self.client_for(target)
        if target.is_admin:
            return client.with_options(admin_api_key=target.secret, organization=target.organization or None)
        options = {"api_key": target.secret}
        if target.provider != "azure":
            options["organization"] = target.organization or None
            options["project"] = target.project or None
        return client.with_options(**options)

    async def send(self, target, call):
        """Send one request and say what happened. Never raises for upstream trouble.

        `call(client, headers)` returns the SDK's awaitable raw response (a
        `….with_raw_response.…(extra_headers=headers)` call) on a client that carries the
        target's key. The Reply's `body` is the parsed JSON of a 2xx answer (None if it is
        not JSON)."""
        client_request_id = str(uuid.uuid4())
        reply = Reply(outcome=Outcome.OK, client_request_id=client_request_id)
        started = time.monotonic()
        try:
            raw = await call(self.keyed_client(target), {"X-Client-Request-Id": client_request_id})
        except openai.APIStatusError as e:
            reply.http_status = e.status_code
            code, kind, message = _error_fields(e.body)
            # Billing trouble is `insufficient_quota` in `code` or, on some answers, `type`.
            code = code or str(e.code or "")
            if kind == "insufficient_quota":
                code = code if code == "insufficient_quota" else kind
            reply.error_code = code[:100]
            message = message or str(e.message or "")
            reply.outcome = classify_status(e.status_code, reply.error_code, message[:MAX_SCAN_CHARS], target.provider)
            reply.message = scrub(message, target.secret)
            _read_headers(reply, e.response.headers)
        except openai.APITimeoutError:
            reply.outcome = Outcome.TIMEOUT
            reply.message = "The API did not answer within the timeout."
        except openai.APIConnectionError as e:
            if isinstance(e.__cause__, destinations.DestinationRefused):
                reply.outcome = Outcome.DESTINATION_REFUSED
                reply.message = scrub(f"Not sent: {e.__cause__}", target.secret)
            else:
                reply.outcome = Outcome.NETWORK_ERROR
                reply.message = scrub(f"Connection failed: {type(e.__cause__ or e).__name__}", target.secret)
        else:
            reply.http_status = raw.status_code
            _read_headers(reply, raw.headers)
            try:
                reply.body = json.loads(raw.text)
            except ValueError:
                reply.body = None
        reply.duration_ms = int((time.monotonic() - started) * 1000)
        log_reply(target, reply)
        return reply

    async def send_patiently(self, target, call, retries=0, max_wait=0.0):
        """`send`, and after a 429 rate limit (not `insufficient_quota`) wait as long as the
        API asked (retry-after-ms / retry-after; 1 s, 2 s, 4 s… when it did not say) and
        send again, up to `retries` times. A wait longer than `max_wait` seconds is not
        taken: that 429 is returned for the caller to record."""
        for attempt in range(retries + 1):
            reply = await self.send(target, call)
            if reply.outcome != Outcome.RATE_LIMITED or attempt == retries or reply.should_retry is False:
                return reply
            wait = reply.retry_after if reply.retry_after is not None else float(2**attempt)
            if wait > max_wait:
                return reply
            await asyncio.sleep(wait)
        return reply

    async def probe(self, target):
        """Prove the target's key works with a free call and say what happened. Never
        raises for upstream trouble; returns a Reply.

        Project and service-account keys list the models (`GET /v1/models`; Azure:
        `GET /openai/models`). Admin keys may call only the administration endpoints, so
        they list one project (`GET /v1/organization/projects?limit=1`)."""

        def call(client, headers):
            if target.is_admin:
                return client.admin.organization.projects.with_raw_response.list(limit=1, extra_headers=headers)
            return client.models.with_raw_response.list(extra_headers=headers)

        reply = await self.send(target, call)
        if reply.outcome == Outcome.OK and not is_list(reply.body):
            reply.outcome = Outcome.MALFORMED_RESPONSE
            reply.message = "The list was not the JSON object the API documents."
        reply.body = None  # a probe keeps only what it stores
        return reply

    async def paginate(self, target, fetch, style="cursor", max_pages=DEFAULT_MAX_PAGES, retries=0, max_wait=0.0):
        """Walk a paginated list; yields one Reply per page and stops after the last page
        or the first page that is not OK (yielded, for the caller to judge).

        `fetch(client, headers, cursor)` requests one page; `cursor` is None for the
        first. `style` is "cursor" for lists with `after` / `has_more` / `last_id` (the
        cursor is `last_id`, else the last item's id) or "page" for `page` /
        `next_page` / `has_more` (usage and costs). Raises PaginationError when the API
        hands back a cursor it already gave (it would loop forever) or after
        `max_pages` pages. `retries` / `max_wait`: a page answered 429 is asked for again
        after its retry-after (see `send_patiently`)."""
        cursor, seen = None, set()
        for _ in range(max_pages):
            reply = await self.send_patiently(
                target, lambda client, headers, cursor=cursor: fetch(client, headers, cursor), retries, max_wait
            )
            yield reply
            body = reply.body if isinstance(reply.body, dict) else {}
            if reply.outcome != Outcome.OK or not body.get("has_more"):
                return
            cursor = next_cursor(body, style)
            if not cursor:
                raise PaginationError("The API said has_more but gave no cursor for the next page.")
            if cursor in seen:
                raise PaginationError(f"The API repeated the cursor {cursor[:40]!r}; stopping instead of looping.")
            seen.add(cursor)
        raise PaginationError(f"Stopped after {max_pages} pages: the list did not end.")


def log_reply(target, reply):
    """One DEBUG line per upstream call, carrying OpenAI's x-request-id and our client
    request id (JSON logs: fields of their own). Never the secret, the message or a body."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    host = target.host()
    log.debug(
        "upstream %s: %s %s in %d ms (x-request-id %s, client request id %s)",
        host,
        reply.outcome,
        reply.http_status or "-",
        reply.duration_ms,
        reply.request_id or "-",
        reply.client_request_id,
        extra={
            "upstream_host": host,
            "outcome": str(reply.outcome),
            "http_status": reply.http_status,
            "duration_ms": reply.duration_ms,
            "upstream_request_id": reply.request_id,
            "client_request_id": reply.client_request_id,
        },
    )


def next_cursor(body, style):
    if style == "page":
        return str(body.get("next_page") or "")
    last = body.get("last_id")
    if not last and isinstance(body.get("data"), list) and body["data"] and isinstance(body["data"][-1], dict):
        last = body["data"][-1].get("id")
    return str(last or "")
