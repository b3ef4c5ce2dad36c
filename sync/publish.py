"""What an admin may change upstream from the sync's pages: publish the console's budgets
as OpenAI spend alerts, and delete an unmanaged key upstream. Both through
console.upstream with the organization's admin key (decrypted for the call only; a
secret that is not an admin key is refused before any request), and both audited.

**Publish budget as spend alert** (`publish_budgets`). For the organization's monthly
budget and each active project's with a budget and a `proj_…` id, one alert per
threshold of the organization's `alert_thresholds` (50,80,100 → 50 %, 80 %, 100 % of the
budget, in cents), emailed to the organization's alert addresses. Per scope it reads
the current alerts (one list) and then, per threshold: the alert the console published
for that percentage before (SpendAlert.published_percent), else an upstream alert of
exactly that amount, is updated if its amount or recipients differ and left alone if
not; otherwise one is created. Re-publishing an unchanged budget sends only the lists.
Alerts someone made by hand for other amounts are left alone.
"""

import asyncio
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from django.db import transaction

from accounts.models import AuditEvent
from console import upstream
from console.upstream import Outcome

from . import parse
from .models import SpendAlert, UpstreamKey, UpstreamKeyKind
from .sync import LIST_LIMIT, MAX_RETRY_AFTER_SECONDS, RETRIES_429, SyncFailure, admin_key_of, admin_target


class PublishRefused(Exception):
    """Nothing was sent: the message says why."""


@dataclass
class Published:
    created: list = field(default_factory=list)  # [(scope, percent, cents)]
    updated: list = field(default_factory=list)
    unchanged: int = 0
    requests: int = 0


def threshold_cents(budget_usd, percent):
    return int((Decimal(budget_usd) * percent).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def scopes_of(organization):
    """[(project or None, budget)] with a budget to publish."""
    scopes = [(None, organization.monthly_budget_usd)] if organization.monthly_budget_usd else []
    projects = organization.projects.filter(
        archived_at__isnull=True, monthly_budget_usd__isnull=False, monthly_budget_usd__gt=0
    ).exclude(openai_project_id="")
    return scopes + [(p, p.monthly_budget_usd) for p in projects.order_by("name")]


def resource(client, project):
    org = client.admin.organization
    return (org.projects.spend_alerts if project else org.spend_alerts).with_raw_response


def scope_args(project):
    return {"project_id": project.openai_project_id} if project else {}


def check(reply, what):
    if reply.outcome != Outcome.OK or not isinstance(reply.body, dict):
        status = f"HTTP {reply.http_status} " if reply.http_status else ""
        raise SyncFailure(reply.outcome, upstream.scrub(f"{what}: {status}{reply.error_code} {reply.message}".strip()))
    return reply.body


async def publish_scope(pool, target, plan, project, budget, recipients, result):
    """Bring one scope's alerts in line; returns the SpendAlert rows to keep for it."""
    label = project.name if project else "organization"

    async def send(call):
        result.requests += 1
        return await pool.send_patiently(target, call, RETRIES_429, MAX_RETRY_AFTER_SECONDS)

    body = check(
        await send(lambda c, h: resource(c, project).list(**scope_args(project), limit=LIST_LIMIT, extra_headers=h)),
        f"{label}: listing spend alerts",
    )
    current = {a.id: a for a in map(parse.spend_alert, body.get("data") or []) if a}
    published = plan.published.get(project.pk if project else None, {})
    rows, used = [], set()
    for percent in plan.thresholds:
        cents = threshold_cents(budget, percent)
        alert = current.get(published.get(percent))
        if alert is None or alert.id in used:
            alert = next((a for a in current.values() if a.threshold_cents == cents and a.id not in used), None)
        params = {
            "currency": "USD",
            "interval": "month",
            "threshold_amount": cents,
            "notification_channel": {"type": "email", "recipients": recipients},
        }
        if alert is None:
            reply = await send(
                lambda c, h, p=params: resource(c, project).create(**scope_args(project), **p, extra_headers=h)
            )
            alert = parse.spend_alert(check(reply, f"{label}: creating the {percent}% alert"))
            result.created.append((label, percent, cents))
        elif alert.threshold_cents != cents or alert.recipients != ",".join(recipients):
            reply = await send(
                lambda c, h, p=params, i=alert.id: resource(c, project).update(
                    i, **scope_args(project), **p, extra_headers=h
                )
            )
            alert = parse.spend_alert(check(reply, f"{label}: updating the {percent}% alert"))
            result.updated.append((label, percent, cents))
        else:
            result.unchanged += 1
        if alert is None:
            raise SyncFailure(Outcome.MALFORMED_RESPONSE, f"{label}: the alert answer was not a spend alert.")
        used.add(alert.id)
        rows.append((alert, percent))
    return rows


@dataclass
class Plan:
    """What publishing needs from the database, read before any request (no query may
    run inside the event loop)."""

    thresholds: list
    published: dict  # {project pk or None: {percent: upstream alert id}}


def plan_for(organization):
    published = {}
    rows = SpendAlert.objects.filter(organization=organization, published_percent__isnull=False)
    for project_id, percent, upstream_id in rows.values_list("project_id", "published_percent", "upstream_id"):
        published.setdefault(project_id, {})[percent] = upstream_id
    return Plan(thresholds=organization.alert_threshold_list(), published=published)


async def publish_all(target, plan, scopes, recipients, result):
    kept = []
    async with upstream.Pool() as pool:
        for project, budget in scopes:
            rows = await publish_scope(pool, target, plan, project, budget, recipients, result)
            kept.append((project, rows))
    return kept


def publish_budgets(organization, actor):
    """Publish the organization's budgets as spend alerts (see the module docstring).
    Returns Published; raises PublishRefused (nothing sent) or SyncFailure (what was
    sent before the failure is audited)."""
    key = admin_key_of(organization)
    if key is None:
        raise PublishRefused(f"“{organization.slug}” has no active admin key.")
    recipients = organization.alert_email_list()
    if not recipients:
        raise PublishRefused(f"“{organization.slug}” has no alert email addresses for the spend alerts.")
    scopes = list(scopes_of(organization))
    if not scopes:
        raise PublishRefused(f"“{organization.slug}” has no monthly budget (nor any project with one).")
    target, failure = admin_target(key)
    if failure is not None:
        raise PublishRefused(failure.message)
    result = Published()
    try:
        kept = asyncio.run(publish_all(target, plan_for(organization), scopes, recipients, result))
    except SyncFailure:
        record(actor, organization, result, failed=True)
        raise
    finally:
        del target
    with transaction.atomic():
        for project, rows in kept:
            for alert, percent in rows:
                SpendAlert.objects.update_or_create(
                    organization=organization,
                    upstream_id=alert.id,
                    defaults={
                        "project": project,
                        "threshold_cents": alert.threshold_cents,
                        "currency": alert.currency,
                        "interval": alert.interval,
                        "recipients": alert.recipients,
                        "published_percent": percent,
                    },
                )
        record(actor, organization, result)
    return result


def record(actor, organization, result, failed=False):
    AuditEvent.record(
        actor,
        "spend_alert.published" if not failed else "spend_alert.publish_failed",
        organization,
        created=[f"{scope} {percent}%: {cents} cents" for scope, percent, cents in result.created],
        updated=[f"{scope} {percent}%: {cents} cents" for scope, percent, cents in result.updated],
        unchanged=result.unchanged,
    )


# --- deleting an unmanaged key upstream ---------------------------------------------
def deletable(upstream_key):
    """Why this upstream key may not be deleted from here, or "" when it may."""
    if upstream_key.gone_at is not None:
        return "it is already gone upstream"
    if upstream_key.key_id is not None:
        return "it is registered here: revoke or rotate it on its key page"
    if upstream_key.kind == UpstreamKeyKind.SERVICE_ACCOUNT:
        return "a service account's key is deleted with its service account"
    return ""


def delete_upstream(upstream_key, actor, now):
    """Delete one unmanaged key upstream (project or admin key). Returns None when done,
    else the reason it was not (refused before sending, or what the API said)."""
    reason = deletable(upstream_key)
    if reason:
        return reason
    key = admin_key_of(upstream_key.organization)
    if key is None:
        return "the organization has no active admin key"
    target, failure = admin_target(key)
    if failure is not None:
        return failure.message

    def call(client, headers):
        org = client.admin.organization
        if upstream_key.kind == UpstreamKeyKind.ADMIN:
            return org.admin_api_keys.with_raw_response.delete(upstream_key.upstream_id, extra_headers=headers)
        return org.projects.api_keys.with_raw_response.delete(
            upstream_key.upstream_id, project_id=upstream_key.upstream_project_id, extra_headers=headers
        )

    async def send(target):
        async with upstream.Pool() as pool:
            return await pool.send_patiently(target, call, RETRIES_429, MAX_RETRY_AFTER_SECONDS)

    try:
        reply = asyncio.run(send(target))
    finally:
        del target
    if reply.outcome not in (Outcome.OK, Outcome.NOT_FOUND):
        return upstream.scrub(f"HTTP {reply.http_status or '—'} {reply.error_code} {reply.message}".strip())
    UpstreamKey.objects.filter(pk=upstream_key.pk).update(gone_at=now)
    AuditEvent.record(
        actor,
        "upstream_key.deleted_upstream",
        upstream_key,
        upstream_id=upstream_key.upstream_id,
        project=upstream_key.upstream_project_id,
        hint=upstream_key.hint,
        already_gone=reply.outcome == Outcome.NOT_FOUND,
    )
    return None
