"""The key page's “Probe now” button, its probe status (a small JSON endpoint the page
polls, keys/static/keys/key_page.js) and its probe history: a mixin for
keys.admin.ApiKeyAdmin, before its ModelAdmin base.

“Probe now” is a POST (CSRF) for those who may change the key; it queues the probe like
the list action (keys.tasks.enqueue_probes) and is audited the same way
(`key.probe_requested`). The status endpoint is for anyone who may view the key and says
only when the key was last probed, how, and with which HTTP status — never a secret, a
hint or a fingerprint.
"""

import secrets

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.views.decorators.csrf import csrf_protect

from accounts.models import AuditEvent

from . import tasks
from .display import moment, outcome_label
from .models import ApiKey

HISTORY_LENGTH = 20
# The session remembers, per key, that a probe was queued from the page and when the key
# had last been probed before it: the next view of the key's page then says so and polls
# until a newer probe shows. That "before" is taken when queuing, not when the page is
# shown: a worker may answer first, and the page would then wait for a probe newer than
# the one it was waiting for.
WAITING = "keys.probe_waiting"
# “Probe now” on selected keys: each run (its keys and when it was queued) is kept in the
# requester's session under a random token; its page polls how many have been probed since.
RUNS = "keys.probe_runs"
MAX_RUNS = 5


def start_run(request, key_ids):
    """Remember a run of probes queued now; returns its token."""
    token = secrets.token_urlsafe(12)
    runs = dict(list(request.session.get(RUNS, {}).items())[-(MAX_RUNS - 1) :])
    runs[token] = {"ids": [str(pk) for pk in key_ids], "since": timezone.now().isoformat()}
    request.session[RUNS] = runs
    return token


def run_progress(run):
    """{total, probed, finished, outcomes: [[label, count]…]}: how many of the run's keys
    have a probe result since it was queued, by outcome. Two queries, whatever the size."""
    since = parse_datetime(run["since"])
    keys = ApiKey.objects.filter(pk__in=run["ids"])
    done = Q(last_probe_at__gte=since)
    counts = keys.aggregate(total=Count("pk"), probed=Count("pk", filter=done))
    by_outcome = keys.filter(done).order_by().values_list("last_probe_outcome").annotate(n=Count("pk")).order_by("-n")
    return {
        **counts,
        "finished": counts["probed"] >= counts["total"],
        "outcomes": [[outcome_label(code), n] for code, n in by_outcome],
    }


def last_probe_mark(key):
    """The key's last probe time as the status endpoint writes it (probe_status)."""
    return key.last_probe_at.isoformat() if key.last_probe_at else ""


def remember_waiting(request, key, since):
    """`since`: last_probe_mark(key) read before the probe was queued."""
    waiting = request.session.get(WAITING) or {}
    if not isinstance(waiting, dict):  # a list of key ids, from before the mark was kept
        waiting = dict.fromkeys(waiting)
    request.session[WAITING] = {**waiting, str(key.pk): since}


def take_waiting(request, key):
    """(whether a probe was queued from the page, the mark from before it, else None)."""
    waiting = request.session.get(WAITING) or {}
    if str(key.pk) not in waiting:
        return False, None
    if isinstance(waiting, dict):
        since = waiting.pop(str(key.pk))
    else:
        since, waiting = None, {pk: None for pk in waiting if pk != str(key.pk)}
    request.session[WAITING] = waiting
    return True, since


def rate_limit_text(remaining, limit, reset):
    if remaining is None and limit is None:
        return "—"
    text = f"{'?' if remaining is None else f'{remaining:,}'} of {'?' if limit is None else f'{limit:,}'} left"
    return f"{text}, resets in {reset}" if reset else text


def probe_status(key, last):
    """The JSON the key page polls: only when, how and the HTTP status."""
    return {
        "last_probe_at": last_probe_mark(key) or None,
        "last_probe_at_display": moment(key.last_probe_at),
        "outcome": key.last_probe_outcome,
        "outcome_label": outcome_label(key.last_probe_outcome),
        "http_status": last.http_status if last else None,
        "consecutive_failures": key.consecutive_failures,
        "revoked": key.revoked_at is not None,
    }


class ProbeNowAdmin:
    """Mix into the ApiKey admin (before its ModelAdmin base)."""

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/probe-now/", view(self.probe_now_view), name="{}_{}_probe_now".format(*info)),
            path(
                "<path:object_id>/probe-status/", view(self.probe_status_view), name="{}_{}_probe_status".format(*info)
            ),
            path("probe-runs/<str:token>/", view(self.probe_run_view), name="{}_{}_probe_run".format(*info)),
            path(
                "probe-runs/<str:token>/status/",
                view(self.probe_run_status_view),
                name="{}_{}_probe_run_status".format(*info),
            ),
            *super().get_urls(),
        ]

    def run_for(self, request, token):
        if not self.has_view_permission(request):
            raise PermissionDenied
        run = request.session.get(RUNS, {}).get(token)
        if run is None:
            raise Http404("No such probe run in this session.")
        return run

    def probe_run_view(self, request, token):
        """The live progress of “Probe now” on selected keys (keys/static/keys/key_page.js)."""
        run = self.run_for(request, token)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Probing the selected keys",
            "progress": run_progress(run),
            "status_url": reverse("admin:keys_apikey_probe_run_status", args=[token]),
        }
        return TemplateResponse(request, "admin/keys/apikey/probe_run.html", context)

    def probe_run_status_view(self, request, token):
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET"])
        return JsonResponse(run_progress(self.run_for(request, token)))

    @method_decorator(csrf_protect)
    def probe_now_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        key = self.get_object(request, unquote(object_id))
        if key is None:
            raise Http404("No such key.")
        if not self.has_change_permission(request, key):
            raise PermissionDenied
        back = HttpResponseRedirect(reverse("admin:keys_apikey_change", args=[key.pk]))
        if key.is_revoked():
            self.message_user(request, "This key is revoked: it is not probed any more.", messages.WARNING)
            return back
        since = last_probe_mark(key)
        queued = tasks.enqueue_probes([key.pk])
        AuditEvent.record(request.user, "key.probe_requested", key, hint=key.hint, queued=bool(queued))
        if queued:
            remember_waiting(request, key, since)
            self.message_user(request, "Probe queued: its outcome appears below when it arrives.", messages.INFO)
        else:
            self.message_user(
                request,
                "No worker queue answered: the key stays due and the next sweep probes it.",
                messages.WARNING,
            )
        return back

    def probe_status_view(self, request, object_id):
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET"])
        key = self.get_object(request, unquote(object_id))
        if key is None:
            raise Http404("No such key.")
        if not self.has_view_permission(request, key):
            raise PermissionDenied
        last = key.probe_results.order_by("-started_at").only("http_status").first()
        return JsonResponse(probe_status(key, last))  # never cached: admin_view

    def probe_context(self, request, key):
        """What the key page's template needs for the button and the status panel."""
        if key is None:
            return {}
        can_probe = not key.is_revoked() and self.has_change_permission(request, key)
        waiting, since = take_waiting(request, key)
        return {
            "probe_now_url": reverse("admin:keys_apikey_probe_now", args=[key.pk]) if can_probe else "",
            "probe_status_url": reverse("admin:keys_apikey_probe_status", args=[key.pk]),
            "probe_waiting": waiting,
            "probe_since": last_probe_mark(key) if since is None else since,
        }

    @admin.display(description="probe history (last 20)")
    def probe_history(self, key):
        if key is None or key.pk is None:
            return "—"
        results = key.probe_results.order_by("-started_at")[:HISTORY_LENGTH]
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    moment(r.started_at),
                    outcome_label(r.outcome),
                    r.http_status or "—",
                    r.request_id or "—",
                    rate_limit_text(
                        r.ratelimit_remaining_requests, r.ratelimit_limit_requests, r.ratelimit_reset_requests
                    ),
                    rate_limit_text(r.ratelimit_remaining_tokens, r.ratelimit_limit_tokens, r.ratelimit_reset_tokens),
                    r.secret_hint or "—",
                )
                for r in results
            ),
        )
        if not rows:
            return "Not probed yet."
        return format_html(
            '<table id="probe-history"><thead><tr><th>When</th><th>Outcome</th><th>HTTP status</th>'
            "<th>Request id</th><th>Rate limit: requests</th><th>Rate limit: tokens</th><th>Secret probed</th>"
            "</tr></thead><tbody>{}</tbody></table>",
            rows,
        )
