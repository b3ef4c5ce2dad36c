"""Probe outcomes per UTC hour, rolled up so the dashboard never scans a week of results.

At 50,000 keys probed hourly, the dashboard's 7-day chart would group over eight million
probe results on every view. Instead a beat task (`keys.tasks.roll_up_probe_hours`, every
ROLL_UP_EVERY_SECONDS) counts each settled hour once into `ProbeHour` rows, and the
dashboard reads those plus the results since the last rolled hour (`outcome_counts`):
two queries whatever the size, the live one over an hour or two of rows through the
covering index on (started_at, outcome).

Exact, not approximate:
- an hour is rolled up only once it ended SETTLE ago, and every run rolls the last
  REROLL_HOURS settled hours again (replacing their rows), so a result written late — a
  batch finishes after its probes started — is counted as long as it is written within
  REROLL_HOURS of its hour's end (a batch's lease is far shorter);
- each rolled hour has a marker row (outcome "", probes = the hour's total, 0 included),
  so the hours rolled are known even when nothing was probed, and whatever is not rolled
  (a fresh install; beat stopped) is counted live;
- hours that leave the window (older than KEEP_DAYS) are deleted.
A deleted key's probes stay counted in the hours rolled before its deletion: the chart
says how many probes were made.
"""

from dataclasses import dataclass, field
from datetime import timedelta

from django.db import transaction
from django.db.models import Count, Q
from django.db.models.functions import TruncDate, TruncHour

from .models import ProbeHour, ProbeResult

SETTLE = timedelta(minutes=10)
REROLL_HOURS = 3
KEEP_DAYS = 8
ROLL_UP_EVERY_SECONDS = 300
MARKER = ""  # the outcome of an hour's marker row


def hour_start(moment):
    return moment.replace(minute=0, second=0, microsecond=0)


def roll_up(now):
    """Roll up every settled hour of the last KEEP_DAYS not rolled yet, and the last
    REROLL_HOURS settled hours again. Returns how many hours were written. Idempotent;
    two runs at once write the same rows (each span is replaced in one transaction, its
    insert an upsert)."""
    until = hour_start(now - SETTLE)  # hours before this one are settled
    oldest = hour_start(now - timedelta(days=KEEP_DAYS))
    rolled = set(ProbeHour.objects.filter(outcome=MARKER, hour__gte=oldest).values_list("hour", flat=True))
    hours = []
    hour = oldest
    while hour < until:
        if hour not in rolled or hour >= until - timedelta(hours=REROLL_HOURS):
            hours.append(hour)
        hour += timedelta(hours=1)
    for start, end in spans(hours):
        counts = (
            ProbeResult.objects.filter(started_at__gte=start, started_at__lt=end)
            .annotate(hour=TruncHour("started_at"))
            .values_list("hour", "outcome")
            .annotate(n=Count("*"))
            .order_by()
        )
        rows = {h: [] for h in hours if start <= h < end}
        for h, outcome, n in counts:
            rows[h].append(ProbeHour(hour=h, outcome=outcome, probes=n))
        with transaction.atomic():
            ProbeHour.objects.filter(hour__gte=start, hour__lt=end).delete()
            ProbeHour.objects.bulk_create(
                [
                    *(r for h in rows for r in rows[h]),
                    *(ProbeHour(hour=h, outcome=MARKER, probes=sum(r.probes for r in rows[h])) for h in rows),
                ],
                batch_size=1000,
                # Two runs at once (two beats): the second's delete misses the rows the
                # first has just inserted, so its insert updates them with the same counts.
                update_conflicts=True,
                unique_fields=["hour", "outcome"],
                update_fields=["probes"],
            )
    ProbeHour.objects.filter(hour__lt=oldest).delete()
    return len(hours)


def spans(hours):
    """Consecutive hours as [start, end) spans: one aggregate query per span."""
    out = []
    for h in sorted(hours):
        if out and out[-1][1] == h:
            out[-1][1] = h + timedelta(hours=1)
        else:
            out.append([h, h + timedelta(hours=1)])
    return [tuple(s) for s in out]


@dataclass
class OutcomeCounts:
    """Probes per UTC day and outcome since `since`, and per outcome in the last hour."""

    by_day: dict = field(default_factory=dict)  # {date: {outcome: n}}
    last_hour: dict = field(default_factory=dict)  # {outcome: n}

    def add(self, day, outcome, n):
        self.by_day.setdefault(day, {})
        self.by_day[day][outcome] = self.by_day[day].get(outcome, 0) + n


def outcome_counts(now, since):
    """Probes per UTC day and outcome from `since` to now, and per outcome in the last
    hour: the rolled hours from ProbeHour, the rest live from ProbeResult. Two queries."""
    counts = OutcomeCounts()
    rolled = list(ProbeHour.objects.filter(hour__gte=hour_start(since)).values_list("hour", "outcome", "probes"))
    done = {h for h, outcome, _ in rolled if outcome == MARKER}
    # Rolled hours are used up to the first hour not rolled: everything after it is live.
    live_from = hour_start(since)
    while live_from in done:
        live_from += timedelta(hours=1)
    for hour, outcome, n in rolled:
        if outcome != MARKER and since <= hour < live_from:
            counts.add(hour.date(), outcome, n)
    hour_ago = now - timedelta(hours=1)
    live = (
        ProbeResult.objects.filter(started_at__gte=min(max(live_from, since), hour_ago))
        .annotate(day=TruncDate("started_at"))
        .values_list("day", "outcome")
        .annotate(
            # Counting an indexed column, not the id: an index-only scan of (started_at,
            # outcome) on PostgreSQL.
            chart=Count("started_at", filter=Q(started_at__gte=max(live_from, since))),
            recent=Count("started_at", filter=Q(started_at__gte=hour_ago)),
        )
        .order_by()
    )
    for day, outcome, chart, recent in live:
        if chart:
            counts.add(day, outcome, chart)
        if recent:
            counts.last_hour[outcome] = counts.last_hour.get(outcome, 0) + recent
    return counts
