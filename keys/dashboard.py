"""The keys' dashboard panel (console/dashboard.py): six aggregate queries, whatever the
number of keys.

1. keys by rotation state and flag, deleted upstream and due for a probe (the SQL twins of
   keys/states.py — the key list's filters count the same rows);
2. open circuits (one row per API host, a handful);
3. the last sweep (accounts/heartbeat.py);
4.–5. probes per UTC day and outcome for the last 7 days, and of the last hour by outcome
   (keys/probe_hours.py: the hours rolled up by beat, and the rest live);
6. per project: active keys, configured and observed RPM — tier mismatches and the keys
   the probe budget defers (`deferrals`, a pure rule).
"""

from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Count, F, IntegerField, Min, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.urls import reverse

from accounts import heartbeat
from accounts.models import Project, ProjectRateLimit
from console import dashboard
from console import dashboard_charts as charts
from console.upstream import Outcome

from . import probe_hours, states
from .models import ApiKey, Circuit, CircuitState

STATE_COLOURS = {
    states.RotationState.COMPLIANT: "#2e7d32",
    states.RotationState.DUE_SOON: "#f9a825",
    states.RotationState.OVERDUE: "#c62828",
    states.RotationState.EXPIRED: "#6a1b9a",
    states.RotationState.REVOKED: "#9e9e9e",
}
# The probe chart's series: healthy, throttled, failed, skipped (the rest).
OUTCOME_SERIES = [
    ("ok", "OK", "#2e7d32"),
    ("rate_limited", "rate limited", "#f9a825"),
    ("failed", "failed", "#c62828"),
    ("skipped", "skipped", "#9e9e9e"),
]
OUTCOME_LABELS = dict(Outcome.choices)


def outcome_series(outcome):
    if outcome == Outcome.OK:
        return "ok"
    if outcome == Outcome.RATE_LIMITED:
        return "rate_limited"
    if outcome in Outcome.failures():
        return "failed"
    return "skipped"


def key_list(**params):
    return reverse("admin:keys_apikey_changelist") + "?" + urlencode(params)


def key_counts(now):
    """One query: {state, "flag:<name>", "deleted_upstream", "due"} over all keys."""
    annotated = ApiKey.objects.with_rotation(now)
    aggregates = {s.value: Count("pk", filter=Q(key_state=s.value)) for s in states.RotationState}
    for flag in states.FlagName:
        aggregates[f"flag:{flag.value}"] = Count("pk", filter=Q(**{states.flag_field(flag): True}))
    active = Q(revoked_at__isnull=True)
    aggregates["deleted_upstream"] = Count("pk", filter=active & Q(deleted_upstream_at__isnull=False))
    aggregates["due"] = Count("pk", filter=active & (Q(next_probe_at__lte=now) | Q(next_probe_at__isnull=True)))
    return annotated.aggregate(**aggregates)


def deferrals(active_keys, configured_rpm, share, interval_seconds):
    """How the probe budget treats one project's keys (a pure rule of keys/limiter.py's
    window): probes may use `share` of the project's RPM (500 when unknown, as
    Project.probe_rpm_budget), at least one a minute. A sweep claims every due key at once,
    so the keys beyond one minute's budget are deferred and retried. Returns None when all
    fit in a minute, else (per minute, deferred per sweep, minutes a full round takes,
    whether a round outlasts the probe interval)."""
    per_minute = max(int(max((configured_rpm or 500) * share, 1.0)), 1)
    if active_keys <= per_minute:
        return None
    minutes = -(-active_keys // per_minute)
    return per_minute, active_keys - per_minute, minutes, minutes * 60 > interval_seconds


def project_rows():
    """One query: each project with active keys or an observed RPM, with its tier and
    synced limit (correlated subqueries: no join of every key with every rate limit)."""
    active = (
        ApiKey.objects.filter(project=OuterRef("pk"), revoked_at__isnull=True)
        .order_by()
        .values("project")
        .annotate(n=Count("pk"))
        .values("n")
    )
    synced = (
        ProjectRateLimit.objects.filter(project=OuterRef("pk"))
        .order_by()
        .values("project")
        .annotate(rpm=Min("max_requests_per_1_minute"))
        .values("rpm")
    )
    return (
        Project.objects.annotate(
            active_keys=Coalesce(Subquery(active, output_field=IntegerField()), 0),
            configured=Coalesce(
                Subquery(synced, output_field=IntegerField()),
                F("tier__requests_per_minute"),
                output_field=IntegerField(),
            ),
        )
        .filter(Q(active_keys__gt=0) | Q(observed_rpm__isnull=False))
        .values_list("name", "organization__name", "tier__name", "active_keys", "configured", "observed_rpm")
        .order_by("organization__name", "name")
    )


def panel(now):
    counts = key_counts(now)
    p = dashboard.Panel()
    S, F_ = states.RotationState, states.FlagName
    p.attention += [
        dashboard.Attention("Keys failing", counts[f"flag:{F_.FAILING}"], key_list(flag=F_.FAILING)),
        dashboard.Attention("Rotation overdue", counts[S.OVERDUE], key_list(rotation=S.OVERDUE)),
        dashboard.Attention("Rotation due soon", counts[S.DUE_SOON], key_list(rotation=S.DUE_SOON)),
        dashboard.Attention("Keys expired", counts[S.EXPIRED], key_list(rotation=S.EXPIRED)),
        dashboard.Attention("Keys unused", counts[f"flag:{F_.UNUSED}"], key_list(flag=F_.UNUSED)),
        dashboard.Attention("Keys leaked", counts[f"flag:{F_.LEAKED}"], key_list(flag=F_.LEAKED)),
        dashboard.Attention(
            "Keys deleted upstream",
            counts["deleted_upstream"],
            key_list(status="not_revoked", deleted_upstream_at__isnull="False"),
        ),
    ]

    circuits = list(
        Circuit.objects.filter(state=CircuitState.OPEN).values_list("host", "opened_at").order_by("opened_at")
    )
    p.attention.append(
        dashboard.Attention(
            "Circuits open",
            len(circuits),
            reverse("admin:keys_circuit_changelist") + "?" + urlencode({"state": CircuitState.OPEN}),
            items=tuple(f"{host} since {at:%Y-%m-%d %H:%M:%S %Z}" if at else host for host, at in circuits),
        )
    )

    mismatched, deferred_lines, deferred_total = 0, [], 0
    share, interval = settings.PROBE_PROJECT_RPM_SHARE, settings.PROBE_INTERVAL_SECONDS
    for name, org, tier, active, configured, observed in project_rows():
        if configured is not None and observed is not None and observed != configured:
            mismatched += 1
        rule = deferrals(active, configured, share, interval)
        if rule:
            per_minute, deferred, minutes, late = rule
            deferred_total += deferred
            why = f"{tier} tier" if tier else "no tier"
            deferred_lines.append(
                f"{org} / {name}: {active} active keys; {why} at {configured or 500} RPM × {share:g} share allows "
                f"{per_minute} probe(s) a minute, so up to {deferred} wait each sweep "
                f"({minutes} min for a full round{', longer than the probe interval' if late else ''})"
            )
    p.attention.append(
        dashboard.Attention(
            "Tier mismatches",
            mismatched,
            reverse("admin:accounts_project_changelist"),
            note="The project list has no tier-mismatch filter: see its “tier check” column.",
        )
    )

    beats = heartbeat.snapshot(now, heartbeat.worker_window())
    outcomes = probe_hours.outcome_counts(now, chart_start(now))
    recent = outcomes.last_hour
    probed = sum(recent.values())
    failed = sum(n for o, n in recent.items() if o in Outcome.failures())
    outcome_text = ", ".join(
        f"{n:,} {OUTCOME_LABELS.get(o, o)}" for o, n in sorted(recent.items(), key=lambda r: -r[1])
    )
    at = beats["beat_at"]
    stale = at is None or (now - at).total_seconds() > heartbeat.beat_max_age()
    p.status.append(
        dashboard.Status(
            "Probe sweep",
            (
                sweep_text(at, beats) if at else "No sweep has run yet",
                f"Probes in the last hour: {probed:,}" + (f" ({outcome_text})" if outcome_text else ""),
                f"Failed probes in the last hour: {failed:,}; keys due now: {counts['due']:,}; "
                f"workers seen: {beats['workers']}",
            ),
            failing=stale or failed > 0 or sweep_left_due(beats) > 0,
            url=reverse("admin:keys_proberesult_changelist"),
        )
    )
    p.status.append(
        dashboard.Status(
            "Keys deferred by the probe budget",
            tuple(deferred_lines)
            or (f"None: every project's active keys fit in one minute's probe budget ({share:g} of its RPM).",),
            failing=bool(deferred_lines),
        )
    )
    if deferred_total:
        p.attention.append(
            dashboard.Attention(
                "Keys deferred by the probe budget (per sweep)",
                deferred_total,
                reverse("admin:accounts_project_changelist"),
                note="See “Keys deferred by the probe budget” below for each project and why.",
            )
        )

    p.charts.append(probe_chart(now, outcomes))
    p.charts.append(
        charts.bars(
            [(s.label, counts[s.value], STATE_COLOURS[s], None) for s in S],
            "Keys by rotation state",
            unit=lambda v: f"{v:,}",
        )
    )
    return p


def sweep_left_due(beats):
    """Keys the last sweep claimed but could not hand to a worker (the broker failed
    part-way): they were left due for the next sweep."""
    claimed, queued = beats["beat_claimed"], beats["beat_queued"]
    return 0 if claimed is None or queued is None else max(claimed - queued, 0)


def sweep_text(at, beats):
    """The last sweep: when, how long, how many keys it claimed and queued, and the keys it
    left due when the broker failed part-way."""
    text = f"Last sweep: {at:%Y-%m-%d %H:%M:%S %Z}, took {beats['beat_value'] or 0:.2f} s"
    if beats["beat_claimed"] is None:
        return text
    text += f", {beats['beat_claimed']:,} due key(s) claimed, {beats['beat_queued'] or 0:,} queued to workers"
    left = sweep_left_due(beats)
    if left:
        text += f"; {left:,} left due: the broker did not take them (the next sweep retries)"
    return text


def chart_start(now):
    """Midnight UTC six days ago: the chart's 7 days, today included."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=6)


def probe_chart(now, counts):
    """Probe outcomes per UTC day for the last 7 days (today included), from
    keys/probe_hours.py's counts."""
    today = now.date()
    days = [today - timedelta(days=i) for i in range(6, -1, -1)]
    by_day = {d: {} for d in days}
    for day, outcomes in counts.by_day.items():
        if day in by_day:
            for outcome, n in outcomes.items():
                series = outcome_series(outcome)
                by_day[day][series] = by_day[day].get(series, 0) + n
    return charts.stacked_columns(
        [(f"{d:%b %d}", by_day[d]) for d in days], OUTCOME_SERIES, "Probe outcomes per day, last 7 days (UTC)"
    )
