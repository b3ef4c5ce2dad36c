"""The one door to OpenAI and Azure OpenAI.

Every call to an upstream API goes through this module: client construction on one
shared connection pool, explicit timeouts, no SDK retries (callers own their retry
policy), an X-Client-Request-Id on every request, and the translation of whatever
happened into an Outcome. Secrets pass through in memory only; nothing here logs,
stores or raises them.
"""

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx2
import openai
from django.conf import settings
from django.db import models


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


@dataclass
class Target:
    """What a probe needs to reach one key's API. `secret` is the plaintext: keep the
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
        """The API host (with its port, if any) this target's calls go to: the circuit
        breaker's unit."""
        url = self.azure_endpoint if self.provider == "azure" else (self.base_url or settings.OPENAI_BASE_URL)
        return urlsplit(url).netloc or url


@dataclass
class Reply:
    """What one upstream call came to. Holds no secret material."""

    outcome: str
    http_status: int | None = None
    error_code: str = ""
    message: str = ""
    request_id: str = ""
    client_request_id: str = ""
    duration_ms: int = 0
    retry_after: float | None = None
    ratelimit_limit_requests: int | None = None
    ratelimit_limit_tokens: int | None = None
    ratelimit_remaining_requests: int | None = None
    ratelimit_remaining_tokens: int | None = None
    ratelimit_reset_requests: str = ""
    ratelimit_reset_tokens: str = ""
    openai_organization: str = ""
    processing_ms: int | None = None


KEYISH = re.compile(
    r"(sk-[A-Za-z0-9_\-*.…]+|[A-Za-z0-9_\-]{20,}T3BlbkFJ[A-Za-z0-9_\-]*|\b[0-9a-fA-F]{32}\b|[A-Za-z0-9]{40,})"
)


def scrub(message, secret=""):
    """Remove anything key-shaped (the 401 body echoes a masked key) and the secret itself."""
    text = str(message or "")
    if secret:
        text = text.replace(secret, "[redacted]")
        if len(secret) >= 8:
            text = text.replace(secret[-8:], "[redacted]")
    text = KEYISH.sub("[redacted]", text)
    return text[:500]


def _int(value):
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _retry_after(headers):
    ms = headers.get("retry-after-ms")
    if ms is not None and _int(ms) is not None:
        return _int(ms) / 1000
    seconds = headers.get("retry-after")
    if seconds is not None:
        try:
            return float(seconds)
        except ValueError:
            return None
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


def classify_status(status, code, message="", provider="openai"):
    """Outcome for an HTTP error status and the error body's `code`.

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


class Pool:
    """One shared httpx2 connection pool for many keys, and the SDK clients on it.

    Use as `async with Pool() as pool:`; clients for each base URL are built once and
    copied per key with `with_options(api_key=…)`, which keeps the same pool.
    """

    def __init__(self, max_connections=None, connect_timeout=None, read_timeout=None):
        self.timeout = httpx2.Timeout(
            read_timeout or settings.UPSTREAM_READ_TIMEOUT,
            connect=connect_timeout or settings.UPSTREAM_CONNECT_TIMEOUT,
        )
        limit = max_connections or settings.UPSTREAM_MAX_CONNECTIONS
        self.http = httpx2.AsyncClient(
            timeout=self.timeout,
            limits=httpx2.Limits(max_connections=limit, max_keepalive_connections=limit),
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

    async def probe(self, target):
        """Prove the target's key works with a free call and say what happened. Never
        raises for upstream trouble; returns a Reply.

        Project and service-account keys list the models (`GET /v1/models`; Azure:
        `GET /openai/models`). Admin keys may call only the administration endpoints, so
        they list one project (`GET /v1/organization/projects?limit=1`)."""
        client_request_id = str(uuid.uuid4())
        headers = {"X-Client-Request-Id": client_request_id}
        client = self.client_for(target)
        if target.is_admin:
            client = client.with_options(admin_api_key=target.secret, organization=target.organization or None)
            request = client.admin.organization.projects.with_raw_response.list(limit=1, extra_headers=headers)
        else:
            options = {"api_key": target.secret}
            if target.provider != "azure":
                options["organization"] = target.organization or None
                options["project"] = target.project or None
            request = client.with_options(**options).models.with_raw_response.list(extra_headers=headers)
        reply = Reply(outcome=Outcome.OK, client_request_id=client_request_id)
        started = time.monotonic()
        try:
            raw = await request
        except openai.APIStatusError as e:
            reply.http_status = e.status_code
            body = e.body if isinstance(e.body, dict) else {}
            error = body.get("error", body) if isinstance(body, dict) else {}
            code = (error.get("code") if isinstance(error, dict) else None) or e.code or ""
            reply.error_code = str(code)[:100]
            message = (error.get("message") if isinstance(error, dict) else None) or e.message
            reply.outcome = classify_status(e.status_code, reply.error_code, message, target.provider)
            reply.message = scrub(message, target.secret)
            _read_headers(reply, e.response.headers)
        except openai.APITimeoutError:
            reply.outcome = Outcome.TIMEOUT
            reply.message = "The API did not answer within the timeout."
        except openai.APIConnectionError as e:
            reply.outcome = Outcome.NETWORK_ERROR
            reply.message = scrub(f"Connection failed: {type(e.__cause__ or e).__name__}", target.secret)
        else:
            reply.http_status = raw.status_code
            _read_headers(reply, raw.headers)
            try:
                body = json.loads(raw.text)
            except ValueError:
                body = None
            if not is_list(body):
                reply.outcome = Outcome.MALFORMED_RESPONSE
                reply.message = "The list was not the JSON object the API documents."
        reply.duration_ms = int((time.monotonic() - started) * 1000)
        return reply
