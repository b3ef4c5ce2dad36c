import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def add_periodic_tasks(sender, **kwargs):
    # One static schedule (never a database scheduler: whoever could edit it could run
    # any task with any arguments). Exactly one beat process runs it.
    from django.conf import settings

    sender.add_periodic_task(
        settings.PROBE_SWEEP_EVERY_SECONDS, sender.signature("keys.tasks.sweep"), name="probe sweep"
    )
    sender.add_periodic_task(24 * 3600, sender.signature("keys.tasks.prune_probe_results"), name="prune probe results")
    # The dashboard's probe chart reads hourly counts (keys/probe_hours.py).
    sender.add_periodic_task(300, sender.signature("keys.tasks.roll_up_probe_hours"), name="roll up probe hours")
    # Superseded secrets whose rotation grace is over are revoked (keys/rotation.py).
    sender.add_periodic_task(300, sender.signature("keys.tasks.end_grace_periods"), name="end rotation grace periods")
    sender.add_periodic_task(
        24 * 3600, sender.signature("keys.tasks.send_rotation_reminders"), name="rotation reminders"
    )
    # Usage and costs (usage/tasks.py): the daily ingest re-reads the trailing window; the
    # hourly refresh reads today and retries organizations whose backoff has passed.
    sender.add_periodic_task(24 * 3600, sender.signature("usage.tasks.ingest_all"), name="usage ingest")
    sender.add_periodic_task(3600, sender.signature("usage.tasks.refresh_today"), name="usage refresh today")
    # Budgets (usage/alerts.py) hourly and after each ingest; the alert outbox every minute.
    sender.add_periodic_task(3600, sender.signature("usage.tasks.evaluate_budgets"), name="evaluate budgets")
    sender.add_periodic_task(60, sender.signature("accounts.tasks.deliver_notifications"), name="deliver notifications")
    # Organization sync with the Administration API (sync/tasks.py), hourly by default.
    sender.add_periodic_task(settings.SYNC_INTERVAL_SECONDS, sender.signature("sync.tasks.sync_all"), name="org sync")


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def json_worker_logs(logger=None, **kwargs):
    """Celery replaces the root logger's handlers in workers and beat: with LOG_FORMAT=json
    their lines are JSON too (console/log_format.py)."""
    from django.conf import settings

    if settings.LOG_FORMAT == "json":
        from console.log_format import JsonFormatter

        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())


from . import startup  # noqa: E402,F401  connects the worker start-up check (refuse to start on bad config)
