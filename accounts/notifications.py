"""The alert outbox: raise a notification once (its dedupe key is unique). Delivery is
built on top of the rows this writes."""

from django.db import transaction
from django.utils.timezone import now

from .models import Notification


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
