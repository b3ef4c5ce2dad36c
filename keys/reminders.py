"""Rotation reminders: before a key falls due (ROTATION_REMINDER_DAYS, 14, 7 and 1 days
by default) and once when it becomes overdue, its organization is told through the alert
outbox (accounts/notifications.py: email and webhook, retried by its delivery).

One reminder per key per due date and threshold, never twice: the outbox's unique dedupe
key is `rotation:<key id>:<due date>:<days>` (0 for overdue), so a rerun, a redelivered
task or two workers at once raise it once, and a rotated key (a new due date) starts a
fresh cycle. A run that missed days sends only the latest threshold crossed (a key due
in 3 days gets the 7-day reminder, not the 14-day one too).

Query-bounded: one query for the candidate keys (the SQL rules of keys/states.py), one
for the reminders already raised among them; only reminders not yet raised cost their
own insert. Subjects and texts name the key (name, hint, project): never a secret.
"""

from datetime import timedelta

from django.conf import settings

from accounts.models import Notification
from accounts.notifications import enqueue

from .models import ApiKey
from .states import RotationState

KIND = "rotation"


def reminder_days():
    return sorted({int(d) for d in settings.ROTATION_REMINDER_DAYS if int(d) > 0}, reverse=True)


def reminder_for(due, now, days=None):
    """Pure: the reminder a key due at `due` should have had by `now`: 0 once overdue,
    else the smallest threshold already reached, else None."""
    if due <= now:
        return 0
    reached = [d for d in (days if days is not None else reminder_days()) if due - timedelta(days=d) <= now]
    return min(reached) if reached else None


def dedupe_key(key_id, due, days):
    return f"rotation:{key_id}:{due:%Y-%m-%d}:{days}"


def where(key):
    if key.project_id:
        return f"project “{key.project.name}” of {key.organization.name}"
    return f"organization {key.organization.name} (admin key)"


def message(key, due, days):
    """(subject, text) for one reminder: the key's name, hint and project, never a secret."""
    label = f"“{key.name}” ({key.hint})"
    if days == 0:
        subject = f"API key {label} is overdue for rotation"
        lead = f"The API key {label} in {where(key)} was due for rotation on {due:%Y-%m-%d %H:%M} UTC."
    else:
        subject = f"API key {label} is due for rotation in {days} day{'s' if days != 1 else ''}"
        lead = f"The API key {label} in {where(key)} falls due for rotation on {due:%Y-%m-%d %H:%M} UTC."
    text = (
        f"{lead}\n"
        f"Policy: rotate every {key.policy_days} days (from the last rotation, else the issue date).\n"
        f"Owner: {key.owner or 'not recorded'}.\n"
        "Rotate it from the key's page in the console."
    )
    return subject, text


def candidates(now):
    """Active, unexpired keys still upstream whose next due date is within the largest threshold (or
    past), with their organization and project: one query, no ciphertext loaded."""
    days = reminder_days()
    horizon = now + timedelta(days=days[0] if days else 0)
    return (
        ApiKey.objects.filter(revoked_at__isnull=True, deleted_upstream_at__isnull=True)
        .with_rotation(now)
        .filter(
            key_state__in=[RotationState.OVERDUE, RotationState.DUE_SOON, RotationState.COMPLIANT],
            next_due_at__lte=horizon,
        )
        .select_related("organization", "project")
        .defer("secret_ciphertext", "fingerprint")
        .order_by("next_due_at", "pk")
    )


def send_reminders(now):
    """Raise every reminder due at `now` that was not raised before. Returns how many
    notifications this run created."""
    days = reminder_days()
    wanted = []
    for key in candidates(now):
        which = reminder_for(key.next_due_at, now, days)
        if which is not None:
            wanted.append((dedupe_key(key.pk, key.next_due_at, which), key, which))
    existing = set(
        Notification.objects.filter(dedupe_key__in=[d for d, _, _ in wanted]).values_list("dedupe_key", flat=True)
    )
    created = 0
    for dedupe, key, which in wanted:
        if dedupe in existing:
            continue
        subject, text = message(key, key.next_due_at, which)
        _, new = enqueue(key.organization, dedupe, KIND, subject, text)
        created += new
    return created
