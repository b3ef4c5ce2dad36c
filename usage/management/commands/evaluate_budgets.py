"""Evaluate every budget now (what the hourly task does) and optionally deliver the
outbox's due notifications; prints what was raised. Each alert is raised once per
scope, threshold and month however often this runs."""

from accounts import notifications
from console.leakguard import GuardedCommand
from usage import alerts


class Command(GuardedCommand):
    help = (
        "Judge every organization's and project's month-to-date spend against its budget and raise the alerts "
        "it calls for (each once per month). --deliver also sends the due notifications."
    )

    def add_arguments(self, parser):
        parser.add_argument("--deliver", action="store_true", help="Then deliver due notifications (email, webhook).")

    def handle(self, *args, deliver, **options):
        summary = alerts.evaluate()
        for alert in summary.raised:
            self.stdout.write(f"raised: {alert.notification.subject if alert.notification else alert}")
        self.stdout.write(f"{summary.scopes} budgeted scope(s) evaluated, {len(summary.raised)} alert(s) raised.")
        if deliver:
            sent = notifications.deliver_due()
            self.stdout.write(
                f"notifications: {sent.delivered} delivered, {sent.retrying} to retry, {sent.gave_up} given up."
            )
