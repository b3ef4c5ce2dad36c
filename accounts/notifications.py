"""The alert outbox: raise a notification once (its dedupe key is unique), then deliver it.

Raising (`enqueue`) writes a row; nothing is sent inside the caller's transaction.
Delivering (`deliver_due`, every minute from accounts.tasks.deliver_notifications) sends
what is due, outside any transaction:

- Email, through Django's email backend (EMAIL_URL) to `email_to`. Once it is sent,
  `email_sent_at` is set at once, so a later retry (a webhook still failing) never sends
  the email again.
- The webhook, when `webhook_url` is set: a POST of `{"text": …}` (Slack-compatible)
  through console.destinations.GuardedSyncTransport, so the URL is re-checked against
  the webhook rules (https; never loopback, link-local or private addresses unless an
  operator listed that exact origin on CONSOLE_ALLOWED_WEBHOOK_HOSTS) for every request
  and at connect time. A 2xx answer is a delivery; anything else is a failure.
  `webhook_sent_at` records it.

Each pass over a notification is one attempt (`attempts` counts them). A pass that
leaves a channel undelivered records `last_error` (scrubbed: the failing channel, the
host, a status or error class — never the URL's path or query, which often hold a
webhook's token, nor anything key-shaped) and sets `next_attempt_at` to now +
NOTIFICATION_BACKOFF_SECONDS × 2^(attempts − 1), at most a day. After
NOTIFICATION_MAX_ATTEMPTS attempts it gives up: `gave_up_at` is set, `next_attempt_at`
cleared, and a WARNING is logged. A delivered notification has `next_attempt_at` None
and no `gave_up_at`.

Claiming: a worker takes due rows with SELECT … FOR UPDATE SKIP LOCKED (PostgreSQL;
other workers skip them instead of waiting) and, in the same short transaction, moves
each one's `next_attempt_at` forward by a lease (a compare-and-swap on the value it
read, so it holds on SQLite too, where FOR UPDATE is ignored and SQLite's single writer
serialises the updates). The transaction ends before any email or HTTP request; the
lease keeps other workers off the row while it is being delivered, and if the worker
dies the row is due again when the lease ends. Email is sent at least once: a worker
that dies between handing a message to the mail server and recording it would send it
again after the lease; the webhook likewise.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import httpx2
from django.conf import settings
from django.core.mail import send_mail
from django.db import connection, transaction
from django.utils import timezone
from django.utils.timezone import now

from console import destinations
from console.leakguard import redact_key_shaped

from .models import Notification, split_emails

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(days=1)
BATCH = 100


def enqueue(organization, dedupe_key, kind, subject, text):
    """Raise a notification for `organization` unless one with `dedupe_key` exists.
    Recipients are the organization's as they are now. Returns (notification, created);
    safe when several workers raise the same one at once (the unique key decides)."""
    with transaction.atomic():
        return Notification.objects.get_or_create(
            dedupe_key=dedupe_key,
            defaults={
                "organization": organization,
                "kind": kind,
                "subject": subject[:200],
                "text": text,
                "email_to": ", ".join(organization.alert_email_list()),
                "webhook_url": organization.alert_webhook_url,
                "next_attempt_at": now(),
            },
        )


@dataclass
class DeliverySummary:
    delivered: int = 0
    retrying: int = 0
    gave_up: int = 0

    def add(self, outcome):
        setattr(self, outcome, getattr(self, outcome) + 1)


def lease_seconds():
    """How long a claimed notification is left to its worker: longer than one delivery
    (an SMTP exchange and a webhook POST, each within the timeout) can take."""
    return max(60, int(4 * settings.NOTIFICATION_WEBHOOK_TIMEOUT_SECONDS))


def backoff(attempts):
    """The wait after the `attempts`-th failed attempt (1-based)."""
    seconds = settings.NOTIFICATION_BACKOFF_SECONDS * 2 ** max(attempts - 1, 0)
    return min(timedelta(seconds=seconds), MAX_BACKOFF)


def due(now):
    """Notifications to deliver now (the partial index accounts_notification_pending)."""
    return Notification.objects.filter(gave_up_at__isnull=True, next_attempt_at__lte=now)


def claim_due(now, limit=BATCH):
    """Claim up to `limit` due notifications for this worker; returns them with
    `next_attempt_at` set to the lease's end (see the module docstring)."""
    lease_until = now + timedelta(seconds=lease_seconds())
    with transaction.atomic():
        rows = due(now).order_by("next_attempt_at", "pk")
        if connection.features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        claimed = []
        for n in rows[:limit]:
            won = Notification.objects.filter(pk=n.pk, next_attempt_at=n.next_attempt_at, gave_up_at__isnull=True)
            if won.update(next_attempt_at=lease_until) == 1:
                n.next_attempt_at = lease_until
                claimed.append(n)
    return claimed


def scrub(text):
    """An error text fit for `last_error` and the log: nothing key-shaped, short."""
    return redact_key_shaped(" ".join(str(text).split()))[:240]


def host_of(url):
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def send_email(n):
    """Send `n` by email; raises on failure."""
    send_mail(n.subject, n.text, settings.DEFAULT_FROM_EMAIL, split_emails(n.email_to), fail_silently=False)


def post_webhook(n):
    """POST `n` to its webhook; returns None when delivered, else the scrubbed reason.
    Never raises for a network or HTTP failure."""
    host = host_of(n.webhook_url)
    timeout = settings.NOTIFICATION_WEBHOOK_TIMEOUT_SECONDS
    try:
        with httpx2.Client(
            transport=destinations.GuardedSyncTransport(destinations.WEBHOOK), timeout=timeout, follow_redirects=False
        ) as client:
            response = client.post(n.webhook_url, json={"text": n.text}, headers={"User-Agent": "openai-console"})
    except destinations.DestinationRefused as e:
        return f"webhook refused: {e.reason}"
    except destinations.DestinationError as e:
        return f"webhook refused: {e}"
    except httpx2.TimeoutException:
        return f"webhook timed out after {timeout:g} s ({host})"
    except (httpx2.HTTPError, OSError) as e:
        return f"webhook failed: {type(e).__name__} ({host})"
    if 200 <= response.status_code < 300:
        return None
    return f"webhook answered HTTP {response.status_code} ({host})"


def deliver(n, now):
    """One attempt at every channel of `n` not yet delivered; records the outcome on the
    row and returns "delivered", "retrying" or "gave_up"."""
    errors = []
    if n.email_to and n.email_sent_at is None:
        try:
            send_email(n)
        except Exception as e:  # any backend failure is this notification's, not the worker's
            errors.append(f"email failed: {type(e).__name__}: {e}")
        else:
            n.email_sent_at = timezone.now()
            if n.webhook_url and n.webhook_sent_at is None:
                # Recorded before the webhook is tried: whatever happens to it, no resend.
                Notification.objects.filter(pk=n.pk).update(email_sent_at=n.email_sent_at)
    if n.webhook_url and n.webhook_sent_at is None:
        error = post_webhook(n)
        if error is None:
            n.webhook_sent_at = timezone.now()
            Notification.objects.filter(pk=n.pk).update(webhook_sent_at=n.webhook_sent_at)
        else:
            errors.append(error)

    n.attempts += 1
    fields = {"attempts": n.attempts, "email_sent_at": n.email_sent_at}
    if not errors:
        outcome, fields["next_attempt_at"] = "delivered", None
    else:
        fields["last_error"] = scrub("; ".join(errors))
        if n.attempts >= settings.NOTIFICATION_MAX_ATTEMPTS:
            outcome, fields["next_attempt_at"], fields["gave_up_at"] = "gave_up", None, now
            log.warning(
                "Gave up delivering notification %s (%s) to organization %s after %d attempts: %s",
                n.pk,
                n.kind,
                n.organization_id,
                n.attempts,
                fields["last_error"],
            )
        else:
            outcome, fields["next_attempt_at"] = "retrying", now + backoff(n.attempts)
            log.info("Notification %s not delivered (attempt %d): %s", n.pk, n.attempts, fields["last_error"])
    Notification.objects.filter(pk=n.pk).update(**fields)
    for name, value in fields.items():
        setattr(n, name, value)
    return outcome


def deliver_due(now=None, limit=BATCH):
    """Deliver every due notification (in claims of `limit`); returns a DeliverySummary.
    Rows another worker holds are skipped; a row that fails is retried later and never
    stops the others."""
    now = now or timezone.now()
    summary = DeliverySummary()
    while True:
        claimed = claim_due(now, limit)
        for n in claimed:
            summary.add(deliver(n, now))
        if len(claimed) < limit:
            return summary
