"""Probe a batch of claimed keys concurrently and store what the API said.

A probe is a free call (the models list), never a billed completion. One batch runs in
one event loop: one shared connection pool, at most PROBE_CONCURRENCY calls in flight,
each project held to its share of RPM by the cross-worker limiter, each API host guarded
by its circuit breaker. Transient outcomes are retried with exponential backoff and full
jitter up to PROBE_MAX_ATTEMPTS; invalid_key and quota_exhausted never are.

Results are written in bulk. The (key, slot) unique constraint makes a redelivered
batch harmless: keys that already have a result for their slot are skipped, and a
conflicting insert is ignored.
"""

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Project
from console import upstream
from console.upstream import Outcome

from . import crypto, limiter
from .circuit import Breakers
from .models import ApiKey, CircuitState, Kind, ProbeResult, Provider

RESULT_FIELDS = [
    "http_status",
    "error_code",
    "message",
    "request_id",
    "client_request_id",
    "duration_ms",
    "ratelimit_limit_requests",
    "ratelimit_limit_tokens",
    "ratelimit_remaining_requests",
    "ratelimit_remaining_tokens",
    "ratelimit_reset_requests",
    "ratelimit_reset_tokens",
    "openai_organization",
    "processing_ms",
]
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
    return target_for(key, secret="").host()


def backoff(attempt, retry_after=None):
    """Seconds to wait before attempt `attempt + 1`: full jitter over an exponential
    ceiling, at least what the API asked for in retry-after, never above the maximum."""
    ceiling = min(settings.PROBE_BACKOFF_MAX_SECONDS, settings.PROBE_BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    delay = random.uniform(0, ceiling)
    if retry_after:
        delay = max(delay, retry_after)
    return min(delay, settings.PROBE_BACKOFF_MAX_SECONDS)


async def probe_key(pool, key, breakers, rate_limiter, semaphore):
    """Probe one key, with retries. Returns (reply or None when deferred, attempts)."""
    breaker = breakers[host_of(key)]
    project_budget = key.project.probe_rpm_budget() if key.project_id else 60
    project_ref = key.project_id or f"org-{key.organization_id}"
    attempts, reply = 0, None
    async with semaphore:
        while True:
            if not breaker.allow():
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
            reply = await pool.probe(target_for(key, secret))
            del secret
            breaker.record(reply.outcome, timezone.now())
            if (
                reply.outcome not in Outcome.transient()
                or reply.outcome in NEVER_RETRIED
                or attempts >= settings.PROBE_MAX_ATTEMPTS
            ):
                return reply, attempts
            await asyncio.sleep(backoff(attempts, reply.retry_after))


async def probe_all(keys_with_slots, breakers):
    """Probe every (key, slot) concurrently on one connection pool."""
    semaphore = asyncio.Semaphore(settings.PROBE_CONCURRENCY)
    rate_limiter = limiter.make_limiter()
    try:
        async with upstream.Pool() as pool:

            async def one(key, slot):
                started = timezone.now()
                reply, attempts = await probe_key(pool, key, breakers, rate_limiter, semaphore)
                return Done(key=key, slot=slot, started_at=started, reply=reply, attempts=attempts)

            return await asyncio.gather(*(one(key, slot) for key, slot in keys_with_slots))
    finally:
        await rate_limiter.aclose()


def load_claimed(claims):
    """ApiKey rows for [(key_id, slot), …], minus revoked keys and keys that already have a
    result for that slot (a redelivered batch)."""
    slots = {str(key_id): int(slot) for key_id, slot in claims}
    keys = {
        str(k.pk): k
        for k in ApiKey.objects.filter(pk__in=slots, revoked_at__isnull=True).select_related(
            "organization", "project__tier", "project__organization"
        )
    }
    done = set(ProbeResult.objects.filter(key_id__in=keys, slot__in=set(slots.values())).values_list("key_id", "slot"))
    todo = [(k, slots[pk]) for pk, k in keys.items() if (k.pk, slots[pk]) not in done]
    return todo, len(keys) - len(todo)


def run_batch(claims, now=None):
    """Probe claimed keys and store the results. `claims` is [(key_id, slot), …] as
    handed out by keys.sweep. Returns a Summary. Safe to run twice for the same claims."""
    summary = Summary()
    todo, summary.already_done = load_claimed(claims)
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


def update_key_state(key, reply, breaker, now):
    """The key's own status after a probe. An outage of the API host (the circuit is open
    after this batch) is the API's failure, not the key's: the key is not marked failing."""
    outcome = reply.outcome
    interval = timedelta(seconds=settings.PROBE_INTERVAL_SECONDS)
    skipped = outcome == Outcome.SKIPPED_CIRCUIT_OPEN
    if skipped or (outcome in Outcome.host_failures() and breaker.state != CircuitState.CLOSED):
        # Look again as soon as the circuit lets a probe through.
        key.next_probe_at = max(breaker.open_until or now, now) + timedelta(seconds=1)
        return
    key.last_probe_at = now
    key.last_probe_outcome = outcome
    key.next_probe_at = now + interval
    if outcome in (Outcome.OK, Outcome.RATE_LIMITED):
        key.last_success_at = now
        key.consecutive_failures = 0
    elif outcome in Outcome.failures():
        key.consecutive_failures += 1
