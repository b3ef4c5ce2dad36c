"""The REST API, /api/v1/ (django-ninja): its OpenAPI document is /api/v1/openapi.json
and its docs page /api/v1/docs. Every endpoint needs a token (api/auth.py) whose user
holds the endpoint's permission; every answer that is not a success has the shape of
api/errors.py.

Lists are paged by a cursor (the last row's id, `next_cursor`), `limit` rows at a time
(API_PAGE_SIZE_DEFAULT, at most API_PAGE_SIZE_MAX): a page costs the same number of
queries however many rows there are. Registering a key goes through the admin's form and
save path (keys/forms.py ApiKeyForm.save_and_record): the same validation, messages,
audit event and first probe.
"""

import uuid
from datetime import UTC

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_variables
from ninja import NinjaAPI, Path, Query, Status

from accounts.models import AuditEvent, Organization, Project
from keys import report, states, tasks
from keys.forms import ApiKeyForm
from keys.models import ApiKey
from usage import budgets
from usage.prices import PriceBook
from usage.spend import month_to_date

from . import errors
from .auth import TokenAuth
from .errors import ApiError
from .schemas import (
    BudgetPage,
    ErrorOut,
    FlagValue,
    KeyCreatedOut,
    KeyIn,
    KeyOut,
    KeyPage,
    KeyStatusOut,
    OrganizationPage,
    ProbeQueuedOut,
    ProjectPage,
    RotationReportOut,
    StateName,
)

api = NinjaAPI(
    title="OpenAI platform console API",
    version="1",
    description="Organizations, projects and keys (hints only, never a secret), key status, rotation and "
    "budgets, key registration and probes. Authenticate with `Authorization: Bearer <token>` (an API token "
    "made under Admin › REST API › API tokens); a token can do what its user's role allows.",
    urls_namespace="api-v1",
    openapi_url="/openapi.json",
    docs_url="/docs",
)
errors.install(api)

VIEW_ORGS = TokenAuth("accounts.view_organization")
VIEW_PROJECTS = TokenAuth("accounts.view_project")
VIEW_KEYS = TokenAuth("keys.view_apikey")
ADD_KEYS = TokenAuth("keys.view_apikey", "keys.add_apikey")
PROBE_KEYS = TokenAuth("keys.view_apikey", "keys.change_apikey")
VIEW_BUDGETS = TokenAuth("accounts.view_organization", "accounts.view_project")


@csrf_exempt
def unknown_path(request):
    """/api/… paths the API does not have: 404 in the API's error shape."""
    return JsonResponse(errors.body("not_found", "No such API path. The schema: /api/v1/openapi.json"), status=404)


def refusals(*statuses):
    """The error answers an endpoint documents, besides its success."""
    return dict.fromkeys((400, 401, 403, 429, *statuses), ErrorOut)


# --- paging ---------------------------------------------------------------------------------
def page_size(limit):
    if limit is None:
        return settings.API_PAGE_SIZE_DEFAULT
    if limit > settings.API_PAGE_SIZE_MAX:
        raise ApiError(400, "Page too large.", {"limit": [f"At most {settings.API_PAGE_SIZE_MAX}."]})
    return limit


def int_cursor(cursor):
    if cursor is None:
        return None
    try:
        return int(cursor)
    except ValueError:
        raise ApiError(400, "Bad cursor.", {"cursor": ["Use the next_cursor of the previous page."]}) from None


def uuid_cursor(cursor):
    if cursor is None:
        return None
    try:
        return uuid.UUID(cursor)
    except ValueError:
        raise ApiError(400, "Bad cursor.", {"cursor": ["Use the next_cursor of the previous page."]}) from None


def paged(queryset, cursor, limit):
    """(rows, next_cursor): up to `limit` rows with pk > cursor, in pk order."""
    if cursor is not None:
        queryset = queryset.filter(pk__gt=cursor)
    rows = list(queryset.order_by("pk")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (str(rows[-1].pk) if more else None)


def organization_by_slug(slug, field="organization"):
    org = Organization.objects.by_slug(slug)
    if org is None:
        raise ApiError(400, "Unknown organization.", {field: ["No organization has this slug."]})
    return org


def money(value):
    return None if value is None else str(value)


# --- organizations and projects -------------------------------------------------------------
def organization_out(org):
    return {
        "id": org.pk,
        "slug": org.slug,
        "name": org.name,
        "openai_org_id": org.openai_org_id,
        "rotation_policy_days": org.rotation_policy_days,
        "monthly_budget_usd": money(org.monthly_budget_usd),
        "alert_thresholds": org.alert_threshold_list(),
        "created": org.created,
    }


@api.get("/organizations", response={200: OrganizationPage, **refusals()}, auth=VIEW_ORGS, tags=["inventory"])
def list_organizations(request, cursor: str | None = None, limit: int | None = Query(None, ge=1)):
    """Organizations, in id order."""
    rows, next_cursor = paged(Organization.objects.all(), int_cursor(cursor), page_size(limit))
    return {"items": [organization_out(o) for o in rows], "next_cursor": next_cursor}


def project_out(project):
    return {
        "id": project.pk,
        "organization": project.organization.slug,
        "name": project.name,
        "openai_project_id": project.openai_project_id,
        "environment": project.environment,
        "tier": project.tier.name if project.tier_id else None,
        "monthly_budget_usd": money(project.monthly_budget_usd),
        "rotation_policy_days": project.effective_rotation_days(),
        "archived_at": project.archived_at,
        "created": project.created,
    }


@api.get("/projects", response={200: ProjectPage, **refusals()}, auth=VIEW_PROJECTS, tags=["inventory"])
def list_projects(
    request, organization: str | None = None, cursor: str | None = None, limit: int | None = Query(None, ge=1)
):
    """Projects, in id order; `organization` (a slug) keeps one organization's."""
    projects = Project.objects.select_related("organization", "tier")
    if organization:
        projects = projects.filter(organization=organization_by_slug(organization))
    rows, next_cursor = paged(projects, int_cursor(cursor), page_size(limit))
    return {"items": [project_out(p) for p in rows], "next_cursor": next_cursor}


# --- keys -----------------------------------------------------------------------------------
def probe_status(key):
    return {
        "last_probe_outcome": key.last_probe_outcome or None,
        "last_probe_at": key.last_probe_at,
        "last_success_at": key.last_success_at,
        "consecutive_failures": key.consecutive_failures,
        "next_probe_at": key.next_probe_at,
    }


def rotation_out(key, now):
    """The rules of keys/states.py on a key loaded with its project and organization."""
    return {
        "state": states.rotation_state(key, now).value,
        "policy_days": states.facts_of(key).policy_days,
        "next_due_at": states.next_rotation_due(key),
        "days_overdue": states.days_overdue(key, now),
        "flags": [{"name": f.name.value, "reason": f.reason, "since": f.since} for f in states.stale_flags(key, now)],
    }


def key_out(key, now):
    """A key as the API shows it: named columns only, never the secret's ciphertext,
    fingerprint or encryption-key version."""
    return {
        "id": str(key.pk),
        "name": key.name,
        "organization": key.organization.slug,
        "project_id": key.project_id,
        "project": key.project.name if key.project_id else None,
        "kind": key.kind,
        "provider": key.provider,
        "hint": key.hint,
        "owner": key.owner,
        "upstream_key_id": key.upstream_key_id,
        "base_url": key.base_url,
        "azure_endpoint": key.azure_endpoint,
        "issued_at": key.issued_at,
        "rotated_at": key.rotated_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "leaked_at": key.leaked_at,
        "last_used_at": key.last_used_at,
        "created": key.created,
        "status": probe_status(key),
        "rotation": rotation_out(key, now),
    }


def keys_with_parents():
    # The ciphertext and fingerprint are never read by the API: defer them.
    return ApiKey.objects.select_related("organization", "project").defer(*ApiKey.secret_fields)


@api.get("/keys", response={200: KeyPage, **refusals()}, auth=VIEW_KEYS, tags=["keys"])
def list_keys(
    request,
    organization: str | None = None,
    project: int | None = None,
    state: StateName | None = None,
    flag: FlagValue | None = None,
    include_revoked: bool = True,
    cursor: str | None = None,
    limit: int | None = Query(None, ge=1),
):
    """Keys in id order, with their probe status, rotation state and stale flags (hints
    only). Filters: `organization` (slug), `project` (id), `state` and `flag` (the rules
    of keys/states.py, applied in SQL), `include_revoked=false`."""
    now = timezone.now()
    keys = keys_with_parents()
    if organization:
        keys = keys.filter(organization=organization_by_slug(organization))
    if project is not None:
        keys = keys.filter(project_id=project)
    if not include_revoked:
        keys = keys.active()
    if state:
        keys = keys.in_rotation_state(state, now)
    if flag:
        keys = keys.with_stale_flag(flag, now)
    rows, next_cursor = paged(keys, uuid_cursor(cursor), page_size(limit))
    return {"items": [key_out(k, now) for k in rows], "next_cursor": next_cursor}


def get_key(key_id):
    """The key with this id; 404 for an id that is not a UUID (no key can have it)."""
    try:
        pk = uuid.UUID(key_id)
    except ValueError:
        raise Http404 from None
    return get_object_or_404(keys_with_parents(), pk=pk)


KEY_ID = Path(..., description="The key's id (a UUID).")


@api.get("/keys/{key_id}", response={200: KeyOut, **refusals(404)}, auth=VIEW_KEYS, tags=["keys"])
def read_key(request, key_id: str = KEY_ID):
    """One key: inventory fields, probe status, rotation state and stale flags."""
    return key_out(get_key(key_id), timezone.now())


@api.get("/keys/{key_id}/status", response={200: KeyStatusOut, **refusals(404)}, auth=VIEW_KEYS, tags=["keys"])
def read_key_status(request, key_id: str = KEY_ID):
    """One key's last probe (outcome, time), consecutive failures, next probe, rotation
    state and stale flags."""
    key = get_key(key_id)
    now = timezone.now()
    return {
        "id": str(key.pk),
        "name": key.name,
        "hint": key.hint,
        "revoked_at": key.revoked_at,
        "status": probe_status(key),
        "rotation": rotation_out(key, now),
    }


@api.post("/keys", response={201: KeyCreatedOut, **refusals()}, auth=ADD_KEYS, tags=["keys"])
@sensitive_variables("payload", "data", "form")
def register_key(request, payload: KeyIn):
    """Register a key: the admin's form (keys/forms.py) validates it — format, destination
    allow-list, duplicates (the message names the project holding it) — encrypts it,
    saves it, records "key.created" and queues its first probe. The secret is never
    answered. 400 with `fields` writes nothing."""
    data = payload.dict()
    if data["organization"]:
        data["organization"] = organization_by_slug(data["organization"]).pk
    data["issued_at"] = data["issued_at"] or timezone.now()
    form = ApiKeyForm(data={name: ("" if value is None else value) for name, value in data.items()})
    if not form.is_valid():
        raise ApiError(400, "The key was not registered.", errors.fields_of_form(form))
    try:
        with transaction.atomic():
            key = form.save_and_record(request.auth.user)
    except IntegrityError as e:
        # The same secret registered by another call between validation and save.
        if "keys_apikey_unique_fingerprint" not in str(e):
            raise
        raise ApiError(400, "The key was not registered.", {"secret": ["This key is already registered."]}) from None
    # on_commit has run unless an outer transaction is still open (then None).
    return Status(201, {**key_out(key, timezone.now()), "first_probe_queued": form.first_probe_queued})


@api.post(
    "/keys/{key_id}/probe",
    response={202: ProbeQueuedOut, **refusals(404, 409)},
    auth=PROBE_KEYS,
    tags=["keys"],
)
def request_probe(request, key_id: str = KEY_ID):
    """Probe a key now (the admin's “Probe now”): it is claimed and queued for a worker.
    A revoked key is not probed (409)."""
    key = get_key(key_id)
    if key.is_revoked():
        raise ApiError(409, "This key is revoked: it is not probed.")
    queued = tasks.enqueue_probes([str(key.pk)]) > 0
    message = "Probe queued." if queued else "No worker queue answered: the next sweep probes it."
    AuditEvent.record(request.auth.user, "key.probe_requested", key, queued=queued, **key.audit_details())
    return Status(202, {"id": str(key.pk), "queued": queued, "message": message})


# --- the rotation report --------------------------------------------------------------------
@api.get("/reports/rotation", response={200: RotationReportOut, **refusals()}, auth=VIEW_KEYS, tags=["reports"])
def rotation_report(
    request,
    organization: str | None = None,
    project: str | None = Query(None, max_length=200),
    environment: str | None = Query(None, max_length=20),
    state: StateName | None = None,
    flag: FlagValue | None = None,
    as_of: str | None = Query(None, max_length=40, description="YYYY-MM-DD (end of that day, UTC) or ISO date-time"),
    page: int = Query(1, ge=1),
    limit: int | None = Query(None, ge=1),
):
    """The rotation report (keys/report.py, the admin page's `build_page`): one row per key
    with its state, stale flags and reasons, and totals per state and flag over every
    row; now, or `as_of` a past date rebuilt from history. Rows a page at a time."""
    size = page_size(limit)
    now = timezone.now()
    try:
        filters = report.Filters(
            organization=organization or "",
            project=project or "",
            environment=environment or "",
            state=state or "",
            flag=flag or "",
        )
        at_date = report.parse_as_of(as_of)
    except report.ReportError as e:
        raise ApiError(400, str(e), {"as_of": [str(e)]}) from None
    if at_date is not None and at_date > now:
        raise ApiError(400, "That is in the future.", {"as_of": ["The report shows what was, not what will be."]})
    result, count = report.build_page(filters, now, at_date, page=page, per_page=size)
    # build_page shows the last page for a page past the end; the API answers none.
    rows = result.rows if (page - 1) * size < count or page == 1 else []
    AuditEvent.record(request.auth.user, "report.viewed", None, **report.audit_details(result, rows=count), via="api")
    return {
        "generated_at": now,
        "as_of": at_date,
        "filters": filters.as_dict(),
        "count": count,
        "totals": result.totals,
        "flag_totals": result.flag_totals,
        "page": page,
        "rows": rows,
        "next_page": page + 1 if page * size < count else None,
    }


# --- budgets --------------------------------------------------------------------------------
def budget_out(organization, project, now, prices):
    """The month-to-date spend of an organization (project None) or one of its projects,
    judged by the rules of usage/budgets.py."""
    spend = month_to_date(organization, project, now=now, prices=prices)
    budget = (project or organization).monthly_budget_usd
    thresholds = organization.alert_threshold_list()
    percent = budgets.percent_used(spend.total, budget)
    return {
        "scope": "project" if project else "organization",
        "organization": organization.slug,
        "project_id": project.pk if project else None,
        "project": project.name if project else None,
        "month_start": budgets.month_start(now),
        "budget_usd": money(budget),
        "spend": {
            "billed_usd": str(spend.billed),
            "estimated_usd": str(spend.estimated),
            "total_usd": str(spend.total),
            "estimated_days": spend.estimated_days,
            "unpriced_models": list(spend.unpriced_models),
        },
        "percent_used": money(percent),
        "forecast_usd": str(budgets.forecast(spend.total, now)),
        "state": budgets.budget_state(spend.total, budget, thresholds, now).value,
        "thresholds": thresholds,
        "thresholds_crossed": budgets.crossed_thresholds(spend.total, budget, thresholds),
    }


@api.get("/budgets/organizations", response={200: BudgetPage, **refusals()}, auth=VIEW_BUDGETS, tags=["budgets"])
def organization_budgets(request, cursor: str | None = None, limit: int | None = Query(None, ge=1)):
    """Each organization's budget this UTC month: spend (billed, and estimated for days
    the Costs API has not reported yet), percent used, forecast and state."""
    now = timezone.now().astimezone(UTC)
    rows, next_cursor = paged(Organization.objects.all(), int_cursor(cursor), page_size(limit))
    prices = PriceBook.load()
    return {"items": [budget_out(org, None, now, prices) for org in rows], "next_cursor": next_cursor}


@api.get("/budgets/projects", response={200: BudgetPage, **refusals()}, auth=VIEW_BUDGETS, tags=["budgets"])
def project_budgets(
    request, organization: str | None = None, cursor: str | None = None, limit: int | None = Query(None, ge=1)
):
    """Each project's budget this UTC month (as /budgets/organizations, per project);
    `organization` (a slug) keeps one organization's."""
    now = timezone.now().astimezone(UTC)
    projects = Project.objects.select_related("organization")
    if organization:
        projects = projects.filter(organization=organization_by_slug(organization))
    rows, next_cursor = paged(projects, int_cursor(cursor), page_size(limit))
    prices = PriceBook.load()
    return {"items": [budget_out(p.organization, p, now, prices) for p in rows], "next_cursor": next_cursor}
