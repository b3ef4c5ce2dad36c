"""The organization sync's dashboard panel (console/dashboard.py): two queries.

1. unmanaged upstream keys (present upstream, registered nowhere here): one count, linked
   to the upstream key list's "Unmanaged" filter;
2. each organization's sync state (one row per organization): the last sync — when, how
   long, how many requests and rows, errors.

Keys deleted upstream are on the keys' panel (a flag on ApiKey).
"""

from urllib.parse import urlencode

from django.urls import reverse

from console import dashboard

from .models import SyncState, UpstreamKey


def panel(now):
    p = dashboard.Panel()
    p.attention.append(
        dashboard.Attention(
            "Unmanaged upstream keys",
            UpstreamKey.objects.unmanaged().count(),
            reverse("admin:sync_upstreamkey_changelist") + "?" + urlencode({"state": "unmanaged"}),
        )
    )
    rows = list(
        SyncState.objects.values_list(
            "organization__name",
            "last_attempt_at",
            "duration_ms",
            "last_outcome",
            "last_error",
            "consecutive_failures",
            "counts",
            "requests",
        ).order_by("organization__name")
    )
    p.status.append(sync_status(rows))
    return p


def sync_status(rows):
    url = reverse("admin:sync_syncedorganization_changelist")
    if not rows:
        return dashboard.Status("Organization sync", ("No sync has run yet.",), url=url)
    attempted = [r for r in rows if r[1]]
    facts = []
    if attempted:
        last = max(attempted, key=lambda r: r[1])
        name, at, ms, outcome, _, _, counts, requests = last
        facts.append(
            f"Last sync: {name}, {at:%Y-%m-%d %H:%M:%S %Z}, took {ms / 1000:.1f} s, {requests} request(s), "
            f"outcome {outcome or '—'}"
        )
        if counts:
            facts.append("Its counts: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(counts.items())))
    else:
        facts.append("Never attempted")
    facts.append(f"Organizations synced: {len(attempted)} of {len(rows)}")
    failing = [r for r in rows if r[5]]
    for name, _, _, outcome, error, failures, _, _ in failing:
        facts.append(f"{name}: {failures} failed sync(s) in a row ({outcome or 'error'}): {error or 'no message'}")
    if not failing:
        facts.append("Errors: none")
    return dashboard.Status("Organization sync", tuple(facts), failing=bool(failing), url=url)
