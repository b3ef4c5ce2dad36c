"""Jobs: long work started from the admin (an organization sync, a usage ingest window)
that a Celery worker runs while a page follows its progress (accounts/job_admin.py).

The life of a job, each step one function here:

- `create` (the admin view): a queued row naming the kind, the organization, who asked
  and the task's parameters — never a secret;
- `enqueue`: publish the task (its message carries ids only). Never raises for the
  broker: with no worker queue the job is failed at once with the command to run
  instead, so the page says so instead of waiting;
- `claim` (the worker): compare-and-swap queued → running. A job already finished, or
  running and alive elsewhere, is not claimed: a redelivered message does nothing. A
  running job silent for longer than JOB_STALE_SECONDS (its worker died) is taken over;
- `Progress`: the callback the work reports through, `progress(total=…, done=…, step=…)`
  (sync/sync.py's signature, plus a step). Writes are throttled to one every
  JOB_PROGRESS_INTERVAL_SECONDS (besides one when the total becomes known and one when
  `done` reaches it), so a 500-project sync does not write 500 times a second;
- `succeed` / `fail`: the outcome, the summary table and the error (scrubbed).

In the database, not the cache: the web process, the worker and beat are separate
processes, and the embedded default's cache is per process.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connections
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone

from console import upstream

from .models import Job, JobState

log = logging.getLogger(__name__)

NO_QUEUE = "No worker queue answered ({}): nothing was started. Run it from a shell on the server instead: {}"


def create(kind, user, organization=None, parameters=None, return_url=""):
    """A queued job requested by `user` now."""
    return Job.objects.create(
        kind=kind,
        organization=organization,
        requested_by=user,
        requested_by_label=user.get_username()[:150],
        parameters=parameters or {},
        return_url=return_url,
    )


def enqueue(job, send, command):
    """Call `send()` (which publishes the job's task, e.g. `task.delay(…, job.pk)`).
    Returns True when it was queued. When the broker cannot be reached (Redis down, a
    fresh clone without var/broker/, …) the job is failed with a message naming
    `command`, the shell command that does the same work, and False is returned."""
    try:
        send()
    except Exception as e:  # noqa: BLE001 — whatever the transport raises: kombu, OSError, redis
        log.warning("broker unreachable (%s); job %s not queued", type(e).__name__, job.pk)
        fail(job.pk, NO_QUEUE.format(type(e).__name__, command))
        job.refresh_from_db()
        return False
    return True


def claim(job_id, now=None):
    """The job, now running in this worker; or None when it must not run here: it is
    gone, finished, or running in a worker that still shows progress."""
    now = now or timezone.now()
    fields = {"state": JobState.RUNNING, "started": now, "updated": now}
    claimed = Job.objects.filter(pk=job_id, state=JobState.QUEUED).update(**fields)
    if not claimed:
        # A redelivered message whose worker died mid-job: take it over once it is stale.
        stale_before = now - timedelta(seconds=settings.JOB_STALE_SECONDS)
        claimed = Job.objects.filter(pk=job_id, state=JobState.RUNNING, updated__lt=stale_before).update(**fields)
    if not claimed:
        log.info("job %s: finished or running elsewhere; nothing to do", job_id)
        return None
    return Job.objects.select_related("organization").get(pk=job_id)


def succeed(job_id, summary, done=None):
    _finish(job_id, JobState.SUCCEEDED, summary=summary, error="", done=done)


def fail(job_id, message, summary=None, done=None):
    """The job failed: `message` is scrubbed of anything key-shaped before it is stored."""
    _finish(job_id, JobState.FAILED, summary=summary or {}, error=upstream.scrub(message), done=done)


def _finish(job_id, state, done=None, **fields):
    now = timezone.now()
    if done is not None:
        fields["done"] = done
    Job.objects.filter(pk=job_id).update(state=state, finished=now, updated=now, **fields)


def redirect_to(jobs):
    """After starting jobs: the progress page of the one job, or the list of one's jobs."""
    if len(jobs) == 1:
        return HttpResponseRedirect(reverse("admin:job", args=[jobs[0].pk]))
    return HttpResponseRedirect(reverse("admin:jobs"))


def table(columns, rows, facts=()):
    """A summary as the progress page shows it: a table, then label: value lines."""
    return {"columns": list(columns), "rows": [list(r) for r in rows], "facts": [[k, v] for k, v in facts]}


class Progress:
    """The progress callback of one running job: `progress(total=None, done=0, step=None)`
    sets the total, adds `done` and sets the current step, and writes them to the job at
    most once every `interval` seconds (and always when the total is set or `done`
    reaches it). Use it as a
    context manager: on exit the last state is written.

    It may be called from inside an event loop (the sync reads its projects with asyncio),
    where Django refuses database calls: there the write runs in a helper thread of its
    own, with its own connection, closed on exit. A failed write is logged, never raised:
    progress is for the page, the work goes on."""

    def __init__(self, job, interval=None, clock=time.monotonic):
        self.job_id = job.pk
        self.done, self.total, self.step = job.done, job.total, job.step
        self.interval = settings.JOB_PROGRESS_INTERVAL_SECONDS if interval is None else interval
        self.clock = clock
        self.last_write = None
        self.writes = 0
        self.helper = None

    def __call__(self, total=None, done=0, step=None):
        counted = total is not None and total != self.total
        if total is not None:
            self.total = total
        self.done += done
        if step is not None:
            self.step = str(step)[:200]
        reached = bool(done) and self.total is not None and self.done >= self.total
        now = self.clock()
        if not (counted or reached) and self.last_write is not None and now - self.last_write < self.interval:
            return
        self.last_write = now
        self.write()

    def write(self):
        values = {"done": self.done, "total": self.total, "step": self.step}

        def update():
            return Job.objects.filter(pk=self.job_id, state=JobState.RUNNING).update(updated=timezone.now(), **values)

        try:
            self.outside_event_loop(update)
        except DatabaseError as e:
            log.warning("job %s: progress not written (%s)", self.job_id, type(e).__name__)
            return
        self.writes += 1

    def outside_event_loop(self, function):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return function()
        if self.helper is None:
            self.helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"job-{self.job_id}-progress")
        return self.helper.submit(function).result()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.write()
        if self.helper is not None:
            self.helper.submit(connections.close_all).result()
            self.helper.shutdown()
            self.helper = None
