"""Probe a batch of claimed keys concurrently and store what the API said.

A probe is a free call (the models list), never a billed completion. One batch runs in
one event loop: one shared connection pool, at most PROBE_CONCURRENCY calls in flight,
each project held to its share of RPM by the cross-worker limiter, each API host guarded
by its circuit breaker. Transient outcomes are retried with exponential backoff and full
jitter up to PROBE_MAX_ATTEMPTS, never sooner than the API's retry-after and never when
it says x-should-retry: false; invalid_key and quota_exhausted never are.

One key's trouble is that key's outcome: anything a probe raises becomes an `error`
outcome for that key (scrubbed message); the other keys' results are stored, every key
gets its next probe time and the breakers are saved.

A batch probes a key only while the key's row still holds the lease its claim wrote
(keys.sweep): a redelivered batch, or one whose keys were claimed again since, does
nothing for them. The (key, slot) unique constraint remains a last line of defence.
"""

import asyncio
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Project
from console import upstream
from console.upstream import RESULT_FIELDS, Outcome

from . import crypto, limiter
from .circuit import Breakers
from .models import ApiKey, Circuit, CircuitState, Kind, ProbeResult, Provider
from .sweep import Claim

log = logging.getLogger(__name__)

NEVER_RETRIED = {Outcome.INVALID_KEY, Outcome.QUOTA_EXHAUSTED}


@dataclass
class Done:
    """What happened to one claimed key in a batch."""

    key: ApiKey
    slot: int
    started_at: object
    reply: upstream.Reply | None = None  # None: deferred by the project limiter
    attempts: int = 0


@dataclass
class Summary:
    outcomes: Counter = field(default_factory=Counter)
    deferred: int = 0
    already_done: int = 0

    def add(self, other):
        self.outcomes.update(other.outcomes)
        self.deferred += other.deferred
        self.already_done += other.already_done

    @property
    def probed(self):
        return sum(self.outcomes.values())

    def describe_outcomes(self):
        """Outcome names and counts, most frequent first, e.g. "ok: 3, invalid_key: 1" (for logs)."""
        counts = sorted(self.outcomes.items(), key=lambda kv: (-kv[1], str(kv[0])))
        return ", ".join(f"{Outcome(name).value}: {count}" for name, count in counts) or "none"


def target_for(key, secret):
    if key.provider == Provider.AZURE:
        return upstream.Target(
            secret=secret,
            provider="azure",
            azure_endpoint=key.azure_endpoint,
            azure_api_version=key.azure_api_version or settings.AZURE_DEFAULT_API_VERSION,
        )
    return upstream.Target(
        secret=secret,
        base_url=key.base_url,
        organization=key.organization.openai_org_id,
        project=key.project.openai_project_id if key.project_id else "",
        is_admin=key.kind == Kind.ADMIN,
    )


def host_of(key):
    return upstream.host_of(key.provider, key.base_url, key.azure_endpoint)


def backoff(attempt, retry_after=None):
    """Seconds to wait before attempt `attempt + 1`: full jitter over an exponential
    ceiling (at most PROBE_BACKOFF_MAX_SECONDS), and never less than the retry-after the
    API asked for — that is a minimum. Whether to wait that long is the caller's call."""
    ceiling = min(settings.PROBE_BACKOFF_MAX_SECONDS, settings.PROBE_BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return max(random.uniform(0, ceiling), retry_after or 0)


def waits_too_long(reply):
    """Did the API ask for a longer wait than a batch holds a probe for?"""
    return (reply.retry_after or 0) > settings.PROBE_BACKOFF_MAX_SECONDS


def error_reply(exc, secret=""):
    """An unexpected exception as this key's outcome. The message names the exception
    and is scrubbed (an exception may carry a header value, i.e. the key)."""
    return upstream.Reply(outcome=Outcome.ERROR, message=upstream.scrub(f"{type(exc).__name__}: {exc}", secret))


async def probe_key(pool, key, breakers, rate_limiter, semaphore):
    """Probe one key, with retries. Returns (reply or None when deferred, attempts)."""
    breaker = breakers[host_of(key)]
    project_budget = key.project.probe_rpm_budget() if key.project_id else 60
    project_ref = key.project_id or f"org-{key.organization_id}"
    attempts, reply = 0, None
    async with semaphore:
        while True:
            if not breaker.allow():
                if reply is not None:
                    # This call was sent (and, say, timed out): that is its outcome. Only
                    # a probe never sent because the circuit was open is "skipped".
                    return reply, attempts
                return upstream.Reply(
                    outcome=Outcome.SKIPPED_CIRCUIT_OPEN, message=f"Circuit for {breaker.host} is open."
                ), attempts
            granted = await limiter.acquire(
                rate_limiter, project_ref, project_budget, settings.PROBE_LIMITER_MAX_WAIT_SECONDS
            )
            if not granted:
                # No budget left in the project's window: keep what the last attempt said,
                # or defer the probe if there was none.
                breaker.trial_in_flight = False
                return reply, attempts
            attempts += 1
            try:
                secret = key.reveal_secret()
            except crypto.DecryptionError as e:
                breaker.trial_in_flight = False
                return upstream.Reply(outcome=Outcome.DECRYPTION_FAILED, message=str(e)[:500]), attempts
            try:
                reply = await pool.probe(target_for(key, secret))
            except Exception as e:  # noqa: BLE001 — one key's trouble is that key's outcome
                reply = error_reply(e, secret)
            finally:
                del secret
            breaker.record(reply.outcome, timezone.now())
            if (
                reply.outcome not in Outcome.transient()
                or reply.outcome in NEVER_RETRIED
                or reply.should_retry is False
                or attempts >= settings.PROBE_MAX_ATTEMPTS
                or waits_too_long(reply)
            ):
                breaker.trial_in_flight = False
                return reply, attempts
            await asyncio.sleep(backoff(attempts, reply.retry_after))


async def probe_all(keys_with_slots, breakers):
    """Probe every (key, slot) concurrently on one connection pool. Whatever one probe
    raises becomes that key's `error` reply; the others are unaffected."""
    semaphore = asyncio.Semaphore(settings.PROBE_CONCURRENCY)
    rate_limiter = limiter.make_limiter()
    try:
        async with upstream.Pool() as pool:

            async def one(key, slot):
                started = timezone.now()
                try:
                    reply, attempts = await probe_key(pool, key, breakers, rate_limiter, semaphore)
                except Exception as e:  # noqa: BLE001
                    log.warning("probe of key %s failed: %s", key.pk, type(e).__name__)
                    breaker = breakers.get(host_of(key))
                    if breaker is not None:
                        breaker.trial_in_flight = False
                    reply, attempts = error_reply(e), 1
                return Done(key=key, slot=slot, started_at=started, reply=reply, attempts=attempts)

            return await asyncio.gather(*(one(key, slot) for key, slot in keys_with_slots))
    finally:
        await rate_limiter.aclose()


def load_claimed(claims, now=None):
    """ApiKey rows to probe for these claims, as [(key, slot), …], and how many claims
    are skipped. A claim is skipped when its key is revoked, when the row no longer holds
    the claim's lease (claimed again, probed or released since: a redelivered or
    superseded batch), or when a result for its slot exists already; in that last case,
    a lease still held is handed back (next probe one interval on), so no key stays
    leased."""
    now = now or timezone.now()
    claims = {c.key_id: c for c in map(Claim.parse, claims)}
    rows = (
        ApiKey.objects.filter(pk__in=claims, revoked_at__isnull=True)
        .select_related("organization", "project__tier", "project__organization")
        .prefetch_related("project__rate_limits")  # Project.probe_rpm_budget: synced limits
    )
    keys = {}
    for k in rows:
        lease = claims[str(k.pk)].lease_until()
        if lease is None or k.next_probe_at == lease:
            keys[str(k.pk)] = k
    done = set(
        ProbeResult.objects.filter(key_id__in=keys, slot__in={claims[pk].slot for pk in keys}).values_list(
            "key_id", "slot"
        )
    )
    todo, finished = [], []
    for pk, k in keys.items():
        (finished if (k.pk, claims[pk].slot) in done else todo).append((k, claims[pk]))
    for k, c in finished:
        if c.lease:
            ApiKey.objects.filter(pk=k.pk, next_probe_at=c.lease_until()).update(
                next_probe_at=now + timedelta(seconds=settings.PROBE_INTERVAL_SECONDS)
            )
    return [(k, c.slot) for k, c in todo], len(claims) - len(todo)


def run_batch(claims, now=None):
    """Probe claimed keys and store the results. `claims` is [Claim, …] (or
    [(key_id, slot, lease), …]) as handed out by keys.sweep. Returns a Summary. Safe to
    run twice for the same claims: the second run finds the leases gone."""
    summary = Summary()
    todo, summary.already_done = load_claimed(claims, now=now)
    if not todo:
        return summary
    breakers = Breakers.load({host_of(k) for k, _ in todo}, now=now)
    done = asyncio.run(probe_all(todo, breakers))
    finished = timezone.now()
    breakers.save(now=finished)
    store(done, breakers, finished, summary)
    return summary


def store(done, breakers, now, summary):
    """Write results and key state in bulk."""
    results, keys, observed = [], [], {}
    for d in done:
        key, reply = d.key, d.reply
        if reply is None:
            summary.deferred += 1
            key.next_probe_at = now + timedelta(seconds=settings.PROBE_LIMITER_MAX_WAIT_SECONDS * 2)
            keys.append(key)
            continue
        summary.outcomes[reply.outcome] += 1
        results.append(
            ProbeResult(
                key=key,
                slot=d.slot,
                started_at=d.started_at,
                attempts=d.attempts,
                outcome=reply.outcome,
                secret_hint=key.hint,
                **{f: getattr(reply, f) if getattr(reply, f) is not None else _blank(f) for f in RESULT_FIELDS},
            )
        )
        update_key_state(key, reply, breakers[host_of(key)], now)
        keys.append(key)
        if reply.outcome == Outcome.OK and key.project_id and (reply.ratelimit_limit_requests or 0) > 0:
            observed[key.project_id] = (reply.ratelimit_limit_requests, reply.ratelimit_limit_tokens)
    with transaction.atomic():
        ProbeResult.objects.bulk_create(results, ignore_conflicts=True, batch_size=500)
        ApiKey.objects.bulk_update(
            keys,
            ["last_probe_at", "last_probe_outcome", "last_success_at", "consecutive_failures", "next_probe_at"],
            batch_size=500,
        )
        for project_id, (rpm, tpm) in observed.items():
            Project.objects.filter(pk=project_id).update(
                observed_rpm=rpm, observed_tpm=tpm if tpm and tpm > 0 else None, observed_limits_at=now
            )


def _blank(field_name):
    return "" if ProbeResult._meta.get_field(field_name).get_internal_type() == "CharField" else None


def next_probe_time(reply, breaker, now):
    """When to look at a key again after this reply.

    - A probe the circuit skipped, or a host failure while the circuit is not closed:
      as soon as the circuit lets a probe through (open_until + a moment), and never
      further out than one probe interval, whatever open_until says.
    - Rate limited with a retry-after longer than a batch waits: right after it.
    - Otherwise one probe interval on.
    Never sooner than a retry-after the API asked for (capped at the interval)."""
    interval = timedelta(seconds=settings.PROBE_INTERVAL_SECONDS)
    asked = timedelta(seconds=min(reply.retry_after or 0, settings.PROBE_INTERVAL_SECONDS))
    if is_circuit_skip(reply, breaker):
        at = min(max(breaker.open_until or now, now) + Circuit.RECHECK_AFTER_OPEN, now + interval)
    elif reply.outcome == Outcome.RATE_LIMITED and waits_too_long(reply):
        at = now + asked
    else:
        at = now + interval
    return max(at, now + asked)


def is_circuit_skip(reply, breaker):
    """Is this reply the API host's trouble rather than the key's? (The key is not marked
    failing for it.)"""
    return reply.outcome == Outcome.SKIPPED_CIRCUIT_OPEN or (
        reply.outcome in Outcome.host_failures() and breaker.state != CircuitState.CLOSED
    )


def update_key_state(key, reply, breaker, now):
    """The key's own status after a probe. An outage of the API host (the circuit is open
    after this batch) is the API's failure, not the key's: the key is not marked failing."""
    key.next_probe_at = next_probe_time(reply, breaker, now)
    if is_circuit_skip(reply, breaker):
        return
    outcome = reply.outcome
    key.last_probe_at = now
    key.last_probe_outcome = outcome
    if outcome in (Outcome.OK, Outcome.RATE_LIMITED):
        key.last_success_at = now
        key.consecutive_failures = 0
    elif outcome in Outcome.failures():
        key.consecutive_failures += 1
