"""Probe-result retention: full rows for PROBE_RESULTS_KEEP_DAYS, then transitions and a
daily rollup per key (README, "Probe-result retention"; docs/PERFORMANCE.md).

`run(now, keep_days)` takes the probe results that started before the **cutoff** — the
start (UTC) of the day `keep_days` before `now`, so whole days only and at least
`keep_days` of full rows stay — and, for a chunk of keys at a time, in ONE short
transaction per chunk:

1. rolls them up per key and UTC day into ProbeDaily (probes, failures, p50/p95 of
   duration_ms — continuous percentiles, PostgreSQL's percentile_cont);
2. copies each row whose outcome differs from the key's previous outcome into
   ProbeTransition (the key's first result counts; the previous outcome of a chunk's
   first row is the key's latest transition, since older days were pruned before);
3. deletes them.

Idempotent and resumable: a chunk's three steps commit together, so an interrupted run
leaves each chunk either done (its old rows are gone: nothing to do again) or untouched;
the unique (key, day) and (key, slot) constraints ignore a second insert anyway. Bounded:
one chunk is `batch_keys` keys × the days past the cutoff; keys are walked in id order,
never all at once.

On PostgreSQL the three steps are three set-based statements (percentile_cont, LAG()
over the key's results); elsewhere (SQLite) the chunk's rows are read once and the same
numbers are computed in Python (`percentile` below). tests/test_retention.py checks both
against hand computations.
"""

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction

from console.upstream import Outcome

from .models import ApiKey, ProbeDaily, ProbeResult, ProbeTransition

BATCH_KEYS = 500


@dataclass
class Summary:
    rolled_up: int = 0  # probe results rolled up and deleted
    days: int = 0  # ProbeDaily rows written
    transitions: int = 0  # ProbeTransition rows written
    chunks: int = 0
    delete_seconds: float = 0.0  # of which deleting (what partitions would save; bench/retention.py)


def cutoff(now, keep_days):
    """Results that started before this are rolled up: midnight UTC, `keep_days` back."""
    day = (now - timedelta(days=keep_days)).astimezone(UTC)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def percentile(sorted_values, fraction):
    """The continuous percentile of sorted numbers (linear interpolation between the two
    nearest ranks), as PostgreSQL's percentile_cont."""
    if not sorted_values:
        return 0.0
    position = fraction * (len(sorted_values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low))


def key_chunks(batch_keys):
    """Every key id (revoked ones too: their results age the same), in id order."""
    last = None
    while True:
        rows = ApiKey.objects.order_by("pk")
        if last is not None:
            rows = rows.filter(pk__gt=last)
        ids = list(rows.values_list("pk", flat=True)[:batch_keys])
        if not ids:
            return
        yield ids
        last = ids[-1]


def run(now, keep_days, batch_keys=BATCH_KEYS, engine=None):
    """Roll up and prune everything before `cutoff(now, keep_days)`. Returns a Summary.
    `engine` "sql" or "python" forces a path (tests); default: SQL on PostgreSQL."""
    before = cutoff(now, keep_days)
    engine = engine or ("sql" if connection.vendor == "postgresql" else "python")
    roll = roll_chunk_sql if engine == "sql" else roll_chunk_python
    summary = Summary()
    for ids in key_chunks(batch_keys):
        with transaction.atomic():
            rolled, days, transitions, delete_seconds = roll(ids, before)
        summary.chunks += 1
        summary.delete_seconds += delete_seconds
        summary.rolled_up += rolled
        summary.days += days
        summary.transitions += transitions
    return summary


# --- PostgreSQL: three set-based statements per chunk ------------------------------------
DAILY_SQL = """
INSERT INTO keys_probedaily (key_id, day, probes, failures, p50_ms, p95_ms)
SELECT key_id, (started_at AT TIME ZONE 'UTC')::date, count(*),
       count(*) FILTER (WHERE outcome = ANY(%(failures)s)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms)
FROM keys_proberesult
WHERE key_id = ANY(%(ids)s::uuid[]) AND started_at < %(before)s
GROUP BY 1, 2
ON CONFLICT (key_id, day) DO NOTHING
"""

TRANSITIONS_SQL = """
INSERT INTO keys_probetransition
    (key_id, slot, started_at, outcome, previous_outcome, duration_ms, http_status, error_code,
     message, request_id, secret_hint)
SELECT key_id, slot, started_at, outcome, COALESCE(previous, ''), duration_ms, http_status,
       error_code, message, request_id, secret_hint
FROM (
    SELECT r.*, COALESCE(
        LAG(r.outcome) OVER (PARTITION BY r.key_id ORDER BY r.started_at, r.slot),
        (SELECT t.outcome FROM keys_probetransition t
         WHERE t.key_id = r.key_id AND (t.started_at, t.slot) < (r.started_at, r.slot)
         ORDER BY t.started_at DESC, t.slot DESC LIMIT 1)
    ) AS previous
    FROM keys_proberesult r
    WHERE r.key_id = ANY(%(ids)s::uuid[]) AND r.started_at < %(before)s
) s
WHERE previous IS NULL OR previous <> outcome
ON CONFLICT (key_id, slot) DO NOTHING
"""

DELETE_SQL = "DELETE FROM keys_proberesult WHERE key_id = ANY(%(ids)s::uuid[]) AND started_at < %(before)s"


def roll_chunk_sql(ids, before):
    params = {"ids": [str(i) for i in ids], "before": before, "failures": sorted(Outcome.failures())}
    with connection.cursor() as cursor:
        cursor.execute(DAILY_SQL, params)
        days = cursor.rowcount
        cursor.execute(TRANSITIONS_SQL, params)
        transitions = cursor.rowcount
        started = time.monotonic()
        cursor.execute(DELETE_SQL, params)
        rolled = cursor.rowcount
    return rolled, days, transitions, time.monotonic() - started


# --- anywhere: the same numbers in Python -------------------------------------------------
TRANSITION_FIELDS = ("duration_ms", "http_status", "error_code", "message", "request_id", "secret_hint")


def previous_outcomes(ids):
    """{key id: outcome of its latest transition} for these keys (one query)."""
    latest = {}
    rows = (
        ProbeTransition.objects.filter(key_id__in=ids)
        .order_by("key_id", "started_at", "slot")
        .values_list("key_id", "outcome")
    )
    for key_id, outcome in rows:
        latest[key_id] = outcome
    return latest


def roll_chunk_python(ids, before):
    old = ProbeResult.objects.filter(key_id__in=ids, started_at__lt=before)
    rows = old.order_by("key_id", "started_at", "slot").values(
        "key_id", "slot", "started_at", "outcome", *TRANSITION_FIELDS
    )
    failures = Outcome.failures()
    previous = previous_outcomes(ids)
    durations, counts, transitions = {}, {}, []
    for row in rows:
        day = (row["key_id"], row["started_at"].astimezone(UTC).date())
        durations.setdefault(day, []).append(row["duration_ms"])
        probes, failed = counts.get(day, (0, 0))
        counts[day] = (probes + 1, failed + (row["outcome"] in failures))
        before_outcome = previous.get(row["key_id"])
        if before_outcome != row["outcome"]:
            transitions.append(
                ProbeTransition(
                    key_id=row["key_id"],
                    slot=row["slot"],
                    started_at=row["started_at"],
                    outcome=row["outcome"],
                    previous_outcome=before_outcome or "",
                    **{f: row[f] for f in TRANSITION_FIELDS},
                )
            )
        previous[row["key_id"]] = row["outcome"]
    daily = []
    for (key_id, day), values in durations.items():
        values.sort()
        probes, failed = counts[(key_id, day)]
        daily.append(
            ProbeDaily(
                key_id=key_id,
                day=day,
                probes=probes,
                failures=failed,
                p50_ms=percentile(values, 0.5),
                p95_ms=percentile(values, 0.95),
            )
        )
    ProbeDaily.objects.bulk_create(daily, ignore_conflicts=True, batch_size=1000)
    ProbeTransition.objects.bulk_create(transitions, ignore_conflicts=True, batch_size=1000)
    started = time.monotonic()
    rolled = old.delete()[0]
    return rolled, len(daily), len(transitions), time.monotonic() - started
