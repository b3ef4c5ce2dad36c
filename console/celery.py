import os

from celery import Celery

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
    sender.add_periodic_task(
        24 * 3600, sender.signature("keys.tasks.send_rotation_reminders"), name="rotation reminders"
    )
    # Usage and costs (usage/tasks.py): the daily ingest re-reads the trailing window; the
    # hourly refresh reads today and retries organizations whose backoff has passed.
    sender.add_periodic_task(24 * 3600, sender.signature("usage.tasks.ingest_all"), name="usage ingest")
    sender.add_periodic_task(3600, sender.signature("usage.tasks.refresh_today"), name="usage refresh today")


from . import startup  # noqa: E402,F401  connects the worker start-up check (refuse to start on bad config)
