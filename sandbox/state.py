"""The sandbox's memory: registered keys and their fault plans, per-project rate windows,
and request statistics. It lives in the server process only; nothing is persisted.

Keys are stored under the SHA-256 of the secret; the plaintext is used only to compute
that digest and the display hint, and is not kept.
"""

import hashlib
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass

from sandbox.errors import key_hint
from sandbox.ratelimit import ProjectWindow
from sandbox.usage import DAY, UsageError, build_usage_plan

PLANS = (
    "healthy",
    "revoked",
    "auth_other",
    "forbidden",
    "not_found",
    "quota",
    "throttled",
    "flaky",
    "slow",
    "hanging",
    "malformed",
    "reset",
    "server_error",
    "bad_gateway",
    "unavailable",
)
PROVIDERS = ("openai", "azure")
DEFAULT_PROJECT = "proj_default"
DEFAULT_RPM = 500  # Tier 1
DEFAULT_TPM = 200_000
SLOW_DEFAULT_DELAY_MS = 1000
RECENT_LIMIT = 10_000


class PlanError(ValueError):
    """A registration the sandbox cannot honour; the message is safe to return."""


def digest(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class KeyPlan:
    """What the sandbox does when a registered key calls it."""

    hint: str
    project: str = DEFAULT_PROJECT
    organization: str = ""
    fault: str = "healthy"
    fail_rate: float = 0.5
    fail_times: int | None = None  # flaky: fail the first N calls, then succeed (replaces fail_rate)
    delay_ms: int = 0
    provider: str = "openai"
    is_admin: bool = False  # an sk-admin- key: only the /v1/organization/* endpoints take it
    retry_after: int | None = None  # 429 rate_limit_exceeded: retry-after seconds (None: the window's)
    retry_after_ms: int | None = None  # 429 rate_limit_exceeded: also send retry-after-ms
    quota_type_only: bool = False  # quota: code null, insufficient_quota only in `type`
    should_retry: bool | None = None  # 5xx: send x-should-retry true/false (None: no header)
    calls: int = 0

    def next_call_fails(self):
        """For the flaky plan: count this call and say whether it fails. Deterministic: with
        fail_times=N the first N calls fail and every later one succeeds; otherwise after n
        calls exactly floor(n * fail_rate) have failed (0.5 → ok, fail, ok, fail, …)."""
        n = self.calls
        self.calls += 1
        if self.fail_times is not None:
            return n < self.fail_times
        return int((n + 1) * self.fail_rate) > int(n * self.fail_rate)

    def organization_header(self):
        """The openai-organization value: the registered org id, or a personal `user-…` id
        derived from the project, as the API sends for keys outside an organization."""
        return self.organization or "user-" + digest(self.project)[:24]


def _optional_int(name, value, minimum=0):
    """None stays None; anything else must be an integer ≥ minimum (bools are refused)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanError(f"{name} must be an integer of at least {minimum}.")
    return value


def _optional_bool(name, value):
    if value is None or isinstance(value, bool):
        return value
    raise PlanError(f"{name} must be true or false.")


def build_plan(
    secret,
    project=None,
    organization=None,
    fault="healthy",
    fail_rate=None,
    fail_times=None,
    delay_ms=0,
    provider="openai",
    retry_after=None,
    retry_after_ms=None,
    quota_type_only=False,
    should_retry=None,
    **unknown,
):
    """Validate a registration and return (digest, KeyPlan). Raises PlanError."""
    if unknown:
        raise PlanError(f"Unknown field(s): {', '.join(sorted(unknown))}.")
    if not isinstance(secret, str) or not secret.strip():
        raise PlanError("Give the key's secret in 'key'.")
    if fault not in PLANS:
        raise PlanError(f"Unknown fault plan {fault!r}; choose one of: {', '.join(PLANS)}.")
    if provider not in PROVIDERS:
        raise PlanError(f"Unknown provider {provider!r}; choose 'openai' or 'azure'.")
    if fail_times is not None and fail_rate is not None:
        raise PlanError("Give fail_rate or fail_times, not both.")
    if fail_times is not None and fault != "flaky":
        raise PlanError("fail_times applies to the 'flaky' plan only.")
    if quota_type_only and fault != "quota":
        raise PlanError("quota_type_only applies to the 'quota' plan only.")
    try:
        fail_rate = 0.5 if fail_rate is None else float(fail_rate)
        delay_ms = int(delay_ms)
    except (TypeError, ValueError):
        raise PlanError("fail_rate must be a number and delay_ms an integer.") from None
    if not 0 <= fail_rate <= 1:
        raise PlanError("fail_rate must be between 0 and 1.")
    if delay_ms < 0:
        raise PlanError("delay_ms must not be negative.")
    fail_times = _optional_int("fail_times", fail_times)
    retry_after = _optional_int("retry_after", retry_after)
    retry_after_ms = _optional_int("retry_after_ms", retry_after_ms)
    quota_type_only = bool(_optional_bool("quota_type_only", quota_type_only))
    should_retry = _optional_bool("should_retry", should_retry)
    if fault == "slow" and not delay_ms:
        delay_ms = SLOW_DEFAULT_DELAY_MS
    plan = KeyPlan(
        hint=key_hint(secret),
        project=project or DEFAULT_PROJECT,
        organization=organization or "",
        fault=fault,
        fail_rate=fail_rate,
        fail_times=fail_times,
        delay_ms=delay_ms,
        provider=provider,
        is_admin=secret.startswith("sk-admin-"),
        retry_after=retry_after,
        retry_after_ms=retry_after_ms,
        quota_type_only=quota_type_only,
        should_retry=should_retry,
    )
    return digest(secret), plan


class Stats:
    """Request counts for tests and benchmarks. Counts API requests, not control calls."""

    def __init__(self):
        self.total = 0
        self.per_project = Counter()
        self.per_key = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.recent = deque(maxlen=RECENT_LIMIT)

    @contextmanager
    def request(self):
        self.total += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    def record(self, plan):
        """Attribute the current request to a key (None for an unknown key). Called once
        for every API request that presents a registered key, whatever the answer (an
        error, a dropped connection, a client that gave up): "exactly once" is counted here."""
        project = plan.project if plan else None
        if plan:
            self.per_project[plan.project] += 1
            self.per_key[plan.hint] += 1
        self.recent.append((time.monotonic(), project))

    def as_json(self):
        return {
            "total": self.total,
            "per_project": dict(self.per_project),
            "per_key": dict(self.per_key),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "recent": [list(item) for item in self.recent],
            "now": time.monotonic(),
        }


class Sandbox:
    """All of the server's state. One instance per server process."""

    def __init__(self, latency_ms=0):
        self.latency_ms = latency_ms
        self.reset()

    def reset(self):
        """Forget keys, usage plans, admin state, windows and stats; keep the global latency setting."""
        self.keys = {}
        self.limits = {}  # project → (rpm, tpm), set by the latest registration in it
        self.windows = {}
        self.stats = Stats()
        self.usage = {}  # admin key digest → UsagePlan
        self.admin = {}  # organization id → admin_api.Organization (the Administration API's state)
        self.last_used = {}  # key digest → unix seconds of its latest successful request

    def set_usage(self, secret, **fields):
        """Give a registered admin key's organization a usage plan (sandbox/usage.py),
        replacing any earlier one and its bumps. Returns the UsagePlan. Raises PlanError."""
        plan = self.lookup(secret) if isinstance(secret, str) else None
        if plan is None or not plan.is_admin:
            raise PlanError("Register the admin key (sk-admin-…) first; usage plans belong to admin keys.")
        try:
            usage = build_usage_plan(**fields)
        except UsageError as e:
            raise PlanError(str(e)) from None
        self.usage[digest(secret)] = usage
        return usage

    def bump_usage(self, secret, day, factor):
        """Late data: multiply the numbers of the UTC day containing `day` (unix seconds)
        by `factor` on every later read. Returns the day's start. Raises PlanError."""
        usage = self.usage.get(digest(secret)) if isinstance(secret, str) else None
        if usage is None:
            raise PlanError("That key has no usage plan; call set_usage first.")
        if isinstance(day, bool) or not isinstance(day, int) or isinstance(factor, bool):
            raise PlanError("day is unix seconds (an integer) and factor a number.")
        try:
            factor = float(factor)
        except (TypeError, ValueError):
            raise PlanError("factor must be a number.") from None
        if factor <= 0:
            raise PlanError("factor must be positive.")
        start = day - day % DAY
        usage.bumps[start] = factor
        return start

    def usage_plan(self, secret):
        return self.usage.get(digest(secret)) if secret else None

    def register(self, secret, rpm=DEFAULT_RPM, tpm=DEFAULT_TPM, **plan_fields):
        """Add or replace a key's plan (rpm/tpm None: the Tier 1 defaults). Returns the
        KeyPlan. Raises PlanError."""
        rpm = DEFAULT_RPM if rpm is None else rpm
        tpm = DEFAULT_TPM if tpm is None else tpm
        try:
            rpm, tpm = int(rpm), int(tpm)
        except (TypeError, ValueError):
            raise PlanError("rpm and tpm must be integers.") from None
        if rpm < 1 or tpm < 0:
            raise PlanError("rpm must be at least 1 and tpm not negative.")
        key_digest, plan = build_plan(secret, **plan_fields)
        self.keys[key_digest] = plan
        if self.limits.get(plan.project) != (rpm, tpm):
            self.limits[plan.project] = (rpm, tpm)
            self.windows.pop(plan.project, None)
        return plan

    def lookup(self, secret):
        """The plan for a presented secret, or None if it was never registered."""
        return self.keys.get(digest(secret)) if secret else None

    def window(self, project):
        if project not in self.windows:
            rpm, tpm = self.limits.get(project, (DEFAULT_RPM, DEFAULT_TPM))
            self.windows[project] = ProjectWindow(rpm, tpm)
        return self.windows[project]
