"""Sync one organization with OpenAI's Administration API.

`sync_organization(organization)`, with the organization's active admin key (decrypted
for this run only; a secret that is not an admin key, sk-admin-…, is refused before any
request):

1. **Fetch** (async, through console.upstream: the SDK's `client.admin.organization.*`
   resources, `Pool.paginate` with `after` / `has_more` / `last_id`, a repeating-cursor
   guard and SYNC_MAX_PAGES as page cap, 429 answered by waiting its retry-after): the
   projects (archived included), and for each project (SYNC_CONCURRENCY requests in
   flight) its API keys, service accounts, users, per-model rate limits and spend alerts;
   then the organization's admin keys, spend alerts and audit-log events since the last
   sync. Any failure stops the run and **nothing is written**: a sync applies a complete
   snapshot or none.
2. **Store** (one transaction), comparing with what is here and writing only what differs:
   - projects by `proj_…` id: created when new (a local project of the same name without
     an id is linked instead), renamed when renamed upstream, archived when archived
     upstream (never deleted; an upstream un-archive does not un-archive here);
   - per-model rate limits → accounts.ProjectRateLimit (limits gone upstream are deleted);
   - service accounts, spend alerts → sync models;
   - keys: each upstream key is matched to a registered key by upstream id, else by hint
     (the redacted value's prefix and last four) among the project's keys without an
     upstream id (admin keys among the organization's) — only an unambiguous match. A
     match sets `upstream_key_id`; `issued_at` becomes the upstream `created_at` when
     that is earlier (the secret is older than its registration; rotation age counts
     from its real birth) and never moves later; `last_used_at` only moves forward.
     Every upstream key is kept as an UpstreamKey; those with no registered key are
     **unmanaged**.
   - audit-log events (deduplicated by their id): `api_key.created` / `api_key.deleted`
     of a registered key become KeyEvents (registered / deleted_upstream) with source
     "upstream", the upstream actor and the upstream time;
   - **deleted upstream**: a registered key with an upstream id that its project's (or
     the organization's admin) key list no longer has gets `deleted_upstream_at` and one
     KeyEvent (the audit log's deletion time and actor when it has them);
   - **orphaned**: a key whose owner is no longer a member of its project (not among its
     users / service accounts, or `owner_project_access: inactive`) gets `owner_left_at`
     and one KeyEvent OWNER_LEFT; the flag is cleared if access comes back.
3. The outcome goes on the organization's SyncState (duration, counts, requests, error,
   backoff). A second run with nothing changed upstream writes nothing and says so.

Failure is the organization's own: `sync_safely` records even the console's own
exceptions on its SyncState and the other organizations go on.
"""

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.audit import audit_value
from accounts.models import AuditEvent, Organization, Project, ProjectRateLimit, project_id_validator
from console import upstream
from console.upstream import Outcome, PaginationError
from keys import crypto, formats
from keys.circuit import Breakers
from keys.models import ApiKey, KeyAction, KeyEvent, Kind
from keys.probe import target_for
from usage.ingest import admin_key_of, organizations_with_admin_keys

from . import parse
from .models import SpendAlert, SyncState, UpstreamEvent, UpstreamKey, UpstreamServiceAccount

log = logging.getLogger(__name__)

LIST_LIMIT = 100  # the Administration API's largest page
RETRIES_429 = 3
MAX_RETRY_AFTER_SECONDS = 60.0
AUDIT_LOG_FIRST_DAYS = 30  # how far back the first sync reads the audit log
AUDIT_EVENT_TYPES = ("api_key.", "service_account.", "project.")
RETRY_BASE_SECONDS = 15 * 60
RETRY_MAX_SECONDS = 12 * 3600
# What the sync changes on a registered key that the audit log records (last use is
# activity, recorded on the key only, as usage ingestion does).
AUDITED_KEY_FIELDS = ("upstream_key_id", "issued_at", "owner_left_at", "deleted_upstream_at")
SECTIONS = ("projects", "rate_limits", "service_accounts", "keys", "spend_alerts", "audit_events")
ACTOR = "sync"


class CircuitOpen(Exception):
    """The API host's circuit is open: nothing is sent (keys/circuit.py)."""


class SyncFailure(Exception):
    """One organization's sync could not complete. The message is scrubbed."""

    def __init__(self, outcome, message, retry_after=None):
        super().__init__(message)
        self.outcome, self.message, self.retry_after = str(outcome), message, retry_after


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0


@dataclass
class Report:
    """What one organization's sync did."""

    sections: dict = field(default_factory=lambda: {name: Counts() for name in SECTIONS})
    unmanaged: int = 0
    deleted_upstream: int = 0
    orphaned: int = 0
    newly_deleted_upstream: int = 0
    newly_orphaned: int = 0
    requests: int = 0
    duration_ms: int = 0

    def total(self):
        total = Counts()
        for counts in self.sections.values():
            for name in ("created", "updated", "unchanged", "deleted"):
                setattr(total, name, getattr(total, name) + getattr(counts, name))
        return total

    def has_changes(self):
        total = self.total()
        return bool(total.created or total.updated or total.deleted or self.newly_deleted_upstream)

    def as_dict(self):
        total = self.total()
        return {
            "created": total.created,
            "updated": total.updated,
            "unchanged": total.unchanged,
            "deleted": total.deleted,
            "unmanaged": self.unmanaged,
            "deleted_upstream": self.deleted_upstream,
            "orphaned": self.orphaned,
            "sections": {name: vars(c) for name, c in self.sections.items()},
        }


@dataclass
class Summary:
    """A run over several organizations: reports by slug, failures by slug."""

    reports: dict = field(default_factory=dict)
    failed: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)

    def add(self, other):
        self.reports.update(other.reports)
        self.failed.update(other.failed)
        self.skipped += other.skipped


# --- fetching -------------------------------------------------------------------------
@dataclass
class ProjectSnapshot:
    project: parse.UpProject
    keys: list = field(default_factory=list)
    service_accounts: list = field(default_factory=list)
    users: list = field(default_factory=list)
    rate_limits: list = field(default_factory=list)
    spend_alerts: list = field(default_factory=list)


@dataclass
class Snapshot:
    projects: list = field(default_factory=list)  # [ProjectSnapshot]
    admin_keys: list = field(default_factory=list)
    spend_alerts: list = field(default_factory=list)
    events: list = field(default_factory=list)


def failure_from_reply(what, reply):
    if reply.outcome == Outcome.OK:
        return SyncFailure(Outcome.MALFORMED_RESPONSE, f"{what}: the answer was not the list the API documents.")
    status = f"HTTP {reply.http_status} " if reply.http_status else ""
    code = f"{reply.error_code}: " if reply.error_code else ""
    if reply.outcome in (Outcome.INVALID_KEY, Outcome.AUTH_UNKNOWN, Outcome.PERMISSION_DENIED):
        lead = "the admin key was refused — "
    else:
        lead = ""
    message = upstream.scrub(f"{what}: {lead}{status}{code}{reply.message}")
    return SyncFailure(reply.outcome, message, retry_after=reply.retry_after)


class Fetcher:
    """Reads one organization's lists with one pool and one admin key; counts requests."""

    def __init__(self, pool, target, progress=None, breaker=None):
        self.pool, self.target, self.requests, self.breaker = pool, target, 0, breaker
        self.progress = progress or (lambda total=None, done=0: None)
        self.semaphore = asyncio.Semaphore(max(settings.SYNC_CONCURRENCY, 1))

    async def collect(self, what, method, **params):
        """Every item of a paginated list: `method` is an SDK `with_raw_response` list
        method (given the client), called with `params` and the cursor as `after`."""

        def fetch(client, headers, cursor):
            if self.breaker is not None and not self.breaker.allow():
                raise CircuitOpen(self.breaker.host)
            self.requests += 1
            extra = {"after": cursor} if cursor else {}
            return method(client)(**params, **extra, limit=LIST_LIMIT, extra_headers=headers)

        items = []
        walk = self.pool.paginate(
            self.target,
            fetch,
            max_pages=settings.SYNC_MAX_PAGES,
            retries=RETRIES_429,
            max_wait=MAX_RETRY_AFTER_SECONDS,
        )
        try:
            async with self.semaphore, aclosing(walk) as replies:
                async for reply in replies:
                    if self.breaker is not None:
                        self.breaker.record(reply.outcome, timezone.now())
                    if reply.outcome != Outcome.OK or not upstream.is_list(reply.body):
                        raise failure_from_reply(what, reply)
                    items.extend(reply.body["data"])
        except PaginationError as e:
            raise SyncFailure("pagination_error", upstream.scrub(f"{what}: {e}")) from None
        except CircuitOpen as e:
            raise SyncFailure(Outcome.SKIPPED_CIRCUIT_OPEN, f"{what}: the circuit for {e} is open.") from None
        return items

    async def project(self, up):
        snap = ProjectSnapshot(project=up)
        pid = up.id
        org = "admin.organization.projects"
        raw = self.raw
        # "any": the default lists only keys whose owner is still a member (orphans hidden).
        items = await self.collect(
            f"{pid} api keys", raw(f"{org}.api_keys"), project_id=pid, owner_project_access="any"
        )
        snap.keys = [k for k in (parse.project_key(i, pid) for i in items) if k]
        items = await self.collect(f"{pid} service accounts", raw(f"{org}.service_accounts"), project_id=pid)
        snap.service_accounts = [m for m in map(parse.member, items) if m]
        items = await self.collect(f"{pid} users", raw(f"{org}.users"), project_id=pid)
        snap.users = [m for m in map(parse.member, items) if m]
        items = await self.collect(f"{pid} rate limits", raw(f"{org}.rate_limits", "list_rate_limits"), project_id=pid)
        snap.rate_limits = [r for r in map(parse.rate_limit, items) if r]
        items = await self.collect(f"{pid} spend alerts", raw(f"{org}.spend_alerts"), project_id=pid)
        snap.spend_alerts = [a for a in map(parse.spend_alert, items) if a]
        self.progress(done=1)
        return snap

    @staticmethod
    def raw(path, method="list"):
        """client → client.<path>.with_raw_response.<method> (the SDK builds the URL)."""

        def get(client):
            resource = client
            for name in path.split("."):
                resource = getattr(resource, name)
            return getattr(resource.with_raw_response, method)

        return get

    async def run(self, events_since):
        snapshot = Snapshot()
        items = await self.collect("projects", self.raw("admin.organization.projects"), include_archived=True)
        projects = [p for p in map(parse.project, items) if p]
        self.progress(total=len(projects))
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.project(p)) for p in projects]
        except ExceptionGroup as eg:
            raise next(e for e in _leaves(eg)) from None
        snapshot.projects = [t.result() for t in tasks]
        items = await self.collect("admin keys", self.raw("admin.organization.admin_api_keys"))
        snapshot.admin_keys = [k for k in map(parse.admin_key, items) if k]
        items = await self.collect("spend alerts", self.raw("admin.organization.spend_alerts"))
        snapshot.spend_alerts = [a for a in map(parse.spend_alert, items) if a]
        items = await self.collect(
            "audit logs",
            self.raw("admin.organization.audit_logs"),
            effective_at={"gte": int(events_since.timestamp())},
        )
        events = [e for e in map(parse.event, items) if e]
        snapshot.events = [e for e in events if e.type.startswith(AUDIT_EVENT_TYPES)]
        return snapshot


def _leaves(group):
    for e in group.exceptions:
        if isinstance(e, ExceptionGroup):
            yield from _leaves(e)
        elif isinstance(e, SyncFailure):
            yield e
        else:
            raise e


async def fetch_snapshot(target, events_since, progress=None, breaker=None):
    async with upstream.Pool() as pool:
        fetcher = Fetcher(pool, target, progress, breaker)
        try:
            return await fetcher.run(events_since), fetcher.requests
        except SyncFailure as failure:
            failure.requests = fetcher.requests
            raise


# --- storing --------------------------------------------------------------------------
def unique_name(name, taken, upstream_id):
    if name not in taken:
        return name
    return f"{name} ({upstream_id})"[:200]


def store_projects(organization, snapshot, report, now):
    """Local projects by upstream id: {proj_id: Project}."""
    counts = report.sections["projects"]
    local = list(Project.objects.filter(organization=organization))
    by_id = {p.openai_project_id: p for p in local if p.openai_project_id}
    by_name = {p.name: p for p in local}
    elsewhere = set(
        Project.objects.filter(openai_project_id__in=[s.project.id for s in snapshot.projects])
        .exclude(organization=organization)
        .values_list("openai_project_id", flat=True)
    )
    created, audits = [], []
    for snap in snapshot.projects:
        up = snap.project
        if up.id in elsewhere:
            log.warning("sync of %s: project %s is registered in another organization", organization.slug, up.id)
            continue
        try:
            project_id_validator(up.id)
        except Exception:  # noqa: BLE001 — an id the console cannot store is skipped
            continue
        project = by_id.get(up.id)
        if project is None and up.name in by_name and not by_name[up.name].openai_project_id:
            project = by_name[up.name]
        if project is None:
            project = Project(
                organization=organization,
                name=unique_name(up.name, by_name, up.id),
                openai_project_id=up.id,
                archived_at=(up.archived_at or now) if up.is_archived else None,
                created=up.created_at or now,
            )
            by_name[project.name] = project
            by_id[up.id] = project
            created.append(project)
            continue
        changes = {}
        if project.openai_project_id != up.id:
            changes["openai_project_id"] = [project.openai_project_id, up.id]
            project.openai_project_id = up.id
            by_id[up.id] = project
        if up.name != project.name and up.name not in by_name:
            changes["name"] = [project.name, up.name]
            by_name.pop(project.name, None)
            project.name = up.name
            by_name[up.name] = project
        if up.is_archived and project.archived_at is None:
            project.archived_at = up.archived_at or now
            changes["archived_at"] = [None, project.archived_at.isoformat()]
        if changes:
            project.save(update_fields=[name for name in changes])
            audits.append(AuditEvent.build(ACTOR, "project.updated", project, changes=changes, source="upstream"))
            counts.updated += 1
        else:
            counts.unchanged += 1
    Project.objects.bulk_create(created, batch_size=1000)
    audits += [
        AuditEvent.build(ACTOR, "project.created", p, organization=organization.slug, source="upstream")
        for p in created
    ]
    AuditEvent.record_many(audits)
    counts.created += len(created)
    return by_id


def mirror(model, existing, wanted, counts, make):
    """Bring rows of `model` in line: `existing` {natural key: row}, `wanted` {natural key:
    values dict}. New rows are made with `make(natural key, values)`; rows not wanted are
    deleted. Writes in bulk, only what differs."""
    new, changed, names = [], [], set()
    for nk, values in wanted.items():
        row = existing.get(nk)
        if row is None:
            new.append(make(nk, values))
            continue
        diff = {k: v for k, v in values.items() if getattr(row, k) != v}
        if diff:
            for k, v in diff.items():
                setattr(row, k, v)
            names.update(diff)
            changed.append(row)
        else:
            counts.unchanged += 1
    gone = [row.pk for nk, row in existing.items() if nk not in wanted]
    model.objects.bulk_create(new, batch_size=1000)
    if changed:
        model.objects.bulk_update(changed, sorted(names), batch_size=1000)
    if gone:
        model.objects.filter(pk__in=gone).delete()
    counts.created += len(new)
    counts.updated += len(changed)
    counts.deleted += len(gone)


def store_rate_limits(snapshot, projects, report, now):
    existing = {
        (r.project_id, r.model): r
        for r in ProjectRateLimit.objects.filter(project__in=[p.pk for p in projects.values()])
    }
    wanted = {}
    for snap in snapshot.projects:
        project = projects.get(snap.project.id)
        if project is None:
            continue
        for limit in snap.rate_limits:
            wanted[(project.pk, limit.model)] = {"upstream_id": limit.id, **dict(limit.values)}

    def make(nk, values):
        return ProjectRateLimit(project_id=nk[0], model=nk[1], synced_at=now, **values)

    mirror(ProjectRateLimit, existing, wanted, report.sections["rate_limits"], make)


def store_service_accounts(snapshot, projects, report):
    existing = {
        (a.project_id, a.upstream_id): a
        for a in UpstreamServiceAccount.objects.filter(project__in=[p.pk for p in projects.values()])
    }
    wanted = {}
    for snap in snapshot.projects:
        project = projects.get(snap.project.id)
        if project is None:
            continue
        for account in snap.service_accounts:
            wanted[(project.pk, account.id)] = {
                "name": account.name,
                "role": account.role,
                "created_at": account.created_at,
            }

    def make(nk, values):
        return UpstreamServiceAccount(project_id=nk[0], upstream_id=nk[1], **values)

    mirror(UpstreamServiceAccount, existing, wanted, report.sections["service_accounts"], make)


def store_spend_alerts(organization, snapshot, projects, report, now):
    existing = {a.upstream_id: a for a in SpendAlert.objects.filter(organization=organization)}
    wanted = {}
    scopes = [(None, snapshot.spend_alerts)]
    scopes += [(projects.get(s.project.id), s.spend_alerts) for s in snapshot.projects if s.project.id in projects]
    for project, alerts in scopes:
        for alert in alerts:
            wanted[alert.id] = {
                "project_id": project.pk if project else None,
                "threshold_cents": alert.threshold_cents,
                "currency": alert.currency,
                "interval": alert.interval,
                "recipients": alert.recipients,
            }

    def make(upstream_id, values):
        return SpendAlert(organization=organization, upstream_id=upstream_id, synced_at=now, **values)

    mirror(SpendAlert, existing, wanted, report.sections["spend_alerts"], make)


def key_event(key, action, at, actor_label, reason):
    return KeyEvent(
        key_id=key.pk,
        at=at,
        action=action,
        actor_label=actor_label[:150],
        source="upstream",
        old_hint=key.hint,
        new_hint=key.hint,
        reason=reason[:300],
    )


def store_events(organization, snapshot, local_by_upstream_id, report):
    """New audit-log events → UpstreamEvent rows (and KeyEvents for registered keys).
    Returns {upstream key id: (at, actor)} of the deletions read."""
    counts = report.sections["audit_events"]
    ids = [e.id for e in snapshot.events]
    seen = set(
        UpstreamEvent.objects.filter(organization=organization, upstream_id__in=ids).values_list(
            "upstream_id", flat=True
        )
    )
    deletions, rows = {}, []
    for e in sorted({e.id: e for e in snapshot.events}.values(), key=lambda e: e.effective_at):
        if e.type == "api_key.deleted" and e.object_id:
            deletions[e.object_id] = (e.effective_at, e.actor_label)
        if e.id in seen:
            counts.unchanged += 1
            continue
        row = UpstreamEvent(
            organization=organization,
            upstream_id=e.id,
            type=e.type,
            effective_at=e.effective_at,
            actor_label=e.actor_label[:200],
            upstream_project_id=e.project_id,
            object_id=e.object_id,
        )
        key = local_by_upstream_id.get(e.object_id) if e.object_id else None
        if key is not None and e.type == "api_key.created":
            row.key_event = key_event(
                key, KeyAction.REGISTERED, e.effective_at, e.actor_label, "api_key.created upstream"
            )
        rows.append(row)
    KeyEvent.objects.bulk_create([r.key_event for r in rows if r.key_event], batch_size=1000)
    for r in rows:
        r.key_event_id = r.key_event.pk if r.key_event else None
    UpstreamEvent.objects.bulk_create(rows, batch_size=1000)
    counts.created += len(rows)
    return deletions


def hint_candidates(keys):
    """{(project id or None, hint): [key, …]} of keys without an upstream id."""
    out = {}
    for key in keys:
        if not key.upstream_key_id and key.hint:
            out.setdefault((key.project_id, key.hint), []).append(key)
    return out


def store_keys(organization, snapshot, projects, report, now, own_key=None):
    """`own_key`: the admin key this sync runs with. Its last use moves with every sync
    (the sync's own requests): that is written, but not counted as a change."""
    quiet = set()
    counts = report.sections["keys"]
    local = list(
        ApiKey.objects.filter(organization=organization).only(
            "pk",
            "name",
            "project_id",
            "kind",
            "hint",
            "upstream_key_id",
            "issued_at",
            "last_used_at",
            "deleted_upstream_at",
            "owner_left_at",
            "revoked_at",
        )
    )
    by_upstream_id = {k.upstream_key_id: k for k in sorted(local, key=lambda k: k.pk) if k.upstream_key_id}
    candidates = hint_candidates(local)
    deletions = store_events(organization, snapshot, by_upstream_id, report)

    # (upstream key, local project or None, the owner is a member) for every upstream key
    upstream_keys, listed_projects = [], set()
    for snap in snapshot.projects:
        project = projects.get(snap.project.id)
        if project is None:
            continue
        listed_projects.add(project.pk)
        members = {m.id for m in snap.users} | {m.id for m in snap.service_accounts}
        for up in snap.keys:
            has_access = up.owner_active and (not up.owner_id or up.owner_id in members)
            upstream_keys.append((up, project, has_access))
    upstream_keys += [(up, None, True) for up in snapshot.admin_keys]

    matched, key_changes, events = {}, {}, []
    for up, project, has_access in upstream_keys:
        key = by_upstream_id.get(up.id)
        if key is None and up.hint:
            scope = (project.pk if project else None, up.hint)
            found = [k for k in candidates.get(scope, []) if k.pk not in matched.values()]
            if len(found) == 1 and (found[0].kind == Kind.ADMIN) == (up.kind == "admin"):
                key = found[0]
        if key is None:
            continue
        matched[up.id] = key.pk
        change = {}
        if key.upstream_key_id != up.id:
            change["upstream_key_id"] = up.id
        if up.created_at and up.created_at < key.issued_at:
            change["issued_at"] = up.created_at
        if up.last_used_at and (key.last_used_at is None or up.last_used_at > key.last_used_at):
            change["last_used_at"] = up.last_used_at
        if not has_access and key.owner_left_at is None:
            change["owner_left_at"] = now
            events.append(
                key_event(key, KeyAction.OWNER_LEFT, now, up.owner_label or "upstream", "owner left the project")
            )
            report.newly_orphaned += 1
        elif has_access and key.owner_left_at is not None:
            change["owner_left_at"] = None
        if change:
            key_changes[key.pk] = (key, change)
            if key.pk == own_key and set(change) == {"last_used_at"}:
                quiet.add(up.id)  # this sync's own requests: written, not counted

    # Deleted upstream: registered keys whose id the (complete) list no longer has.
    present = {up.id for up, _, _ in upstream_keys}
    for key in local:
        if not key.upstream_key_id or key.upstream_key_id in present or key.deleted_upstream_at is not None:
            continue
        if key.kind != Kind.ADMIN and key.project_id not in listed_projects:
            continue  # its project was not listed upstream: nothing to judge by
        at, actor = deletions.get(key.upstream_key_id, (now, "upstream"))
        key_changes.setdefault(key.pk, (key, {}))[1]["deleted_upstream_at"] = at
        events.append(key_event(key, KeyAction.DELETED_UPSTREAM, at, actor, "gone from the Administration API"))
        report.newly_deleted_upstream += 1

    by_fields, audits = {}, []
    for key, change in key_changes.values():
        audited = {
            name: [audit_value(getattr(key, name)), audit_value(value)]
            for name, value in change.items()
            if name in AUDITED_KEY_FIELDS
        }
        for name, value in change.items():
            setattr(key, name, value)
        by_fields.setdefault(tuple(sorted(change)), []).append(key)
        if audited:
            audits.append(AuditEvent.build(ACTOR, "key.updated", key, changes=audited, source="upstream"))
    for names, keys in by_fields.items():
        ApiKey.objects.bulk_update(keys, list(names), batch_size=1000)
    KeyEvent.objects.bulk_create(events, batch_size=1000)
    AuditEvent.record_many(audits)

    # The upstream inventory, as UpstreamKey rows.
    existing = {r.upstream_id: r for r in UpstreamKey.objects.filter(organization=organization)}
    new, changed, names = [], [], set()
    changed_keys = {key.upstream_key_id for key, _ in key_changes.values()} - quiet
    for up, project, has_access in upstream_keys:
        values = {
            "project_id": project.pk if project else None,
            "key_id": matched.get(up.id),
            "upstream_project_id": up.project_id,
            "kind": up.kind,
            "name": up.name,
            "hint": up.hint,
            "owner_type": up.owner_type,
            "owner_id": up.owner_id,
            "owner_label": up.owner_label,
            "owner_has_access": has_access,
            "created_at": up.created_at,
            "last_used_at": up.last_used_at,
            "gone_at": None,
        }
        row = existing.get(up.id)
        if row is None:
            new.append(UpstreamKey(organization=organization, upstream_id=up.id, first_seen_at=now, **values))
            continue
        diff = {k: v for k, v in values.items() if getattr(row, k) != v}
        for k, v in diff.items():
            setattr(row, k, v)
        names.update(diff)
        if diff:
            changed.append(row)
            if up.id in quiet or (set(diff) == {"last_used_at"} and row.key_id == own_key):
                quiet.add(up.id)
                counts.unchanged += 1
        elif up.id in changed_keys:
            counts.updated += 1  # only the registered key changed
        else:
            counts.unchanged += 1
    gone = [r for uid, r in existing.items() if uid not in present and r.gone_at is None]
    for row in gone:
        row.gone_at = now
    if gone:
        names.add("gone_at")
    UpstreamKey.objects.bulk_create(new, batch_size=1000)
    if changed or gone:
        UpstreamKey.objects.bulk_update(changed + gone, sorted(names), batch_size=1000)
    counts.created += len(new)
    counts.updated += len([r for r in changed if r.upstream_id not in quiet]) + len(gone)

    report.unmanaged = UpstreamKey.objects.filter(organization=organization).unmanaged().count()
    flagged = ApiKey.objects.filter(organization=organization)
    report.deleted_upstream = flagged.filter(deleted_upstream_at__isnull=False).count()
    report.orphaned = flagged.filter(owner_left_at__isnull=False).count()


def store(organization, snapshot, now, own_key=None):
    report = Report()
    with transaction.atomic():
        # One store per organization at a time (beat and "Sync now" may overlap): the
        # second waits, then finds the first one's rows and writes only what differs.
        SyncState.objects.select_for_update().filter(organization=organization).first()
        projects = store_projects(organization, snapshot, report, now)
        store_rate_limits(snapshot, projects, report, now)
        store_service_accounts(snapshot, projects, report)
        store_spend_alerts(organization, snapshot, projects, report, now)
        store_keys(organization, snapshot, projects, report, now, own_key)
    return report


# --- one organization ---------------------------------------------------------------
def state_of(organization):
    return SyncState.objects.get_or_create(organization=organization)[0]


def admin_target(key):
    """(Target, None) for the organization's admin key, or (None, SyncFailure) — before
    any request — when its secret does not decrypt or is not an admin key."""
    try:
        secret = key.reveal_secret()
    except crypto.DecryptionError as e:
        return None, SyncFailure(Outcome.DECRYPTION_FAILED, str(e)[:500])
    if formats.detect_format(secret) != formats.ADMIN:
        del secret
        return None, SyncFailure(
            "not_an_admin_key",
            f"The key “{key.name}” ({key.hint}) is registered as the admin key but is not one (sk-admin-…): "
            "nothing was sent. Register the organization's admin key.",
        )
    return target_for(key, secret), None


def sync_organization(organization, now=None, progress=None):
    """Sync one organization and record the outcome on its SyncState. Returns a Report;
    raises SyncFailure (recorded first) when the run failed, and ValueError when the
    organization has no active admin key."""
    now = now or timezone.now()
    key = admin_key_of(organization)
    if key is None:
        raise ValueError(f"Organization “{organization.slug}” has no active admin key.")
    state = state_of(organization)
    state.last_attempt_at = now
    started = time.monotonic()
    since = state.audit_log_read_until or now - timedelta(days=AUDIT_LOG_FIRST_DAYS)
    target, failure = admin_target(key)
    requests, open_until = 0, None
    if failure is None:
        # The API host's circuit (shared with the probes): nothing is sent while it is
        # open, and what this run saw of the host goes back to it.
        host = upstream.host_of(key.provider, key.base_url, key.azure_endpoint)
        breakers = Breakers.load({host}, now=now)
        try:
            snapshot, requests = asyncio.run(fetch_snapshot(target, since, progress, breakers[host]))
        except SyncFailure as e:
            failure, requests = e, getattr(e, "requests", 0)
        finally:
            del target
            breakers.save(now=timezone.now())
        open_until = breakers[host].open_until
    if failure is not None:
        record_failure(state, failure, now, requests, started)
        if failure.outcome == Outcome.SKIPPED_CIRCUIT_OPEN and open_until:
            SyncState.objects.filter(pk=state.pk, next_attempt_at__lt=open_until).update(next_attempt_at=open_until)
        raise failure
    report = store(organization, snapshot, now, own_key=key.pk)
    report.requests = requests
    newest = max((e.effective_at for e in snapshot.events), default=None)
    if newest and (state.audit_log_read_until is None or newest > state.audit_log_read_until):
        state.audit_log_read_until = newest
    report.duration_ms = int((time.monotonic() - started) * 1000)
    record_success(state, report, now)
    return report


def record_success(state, report, now):
    state.last_success_at = now
    state.last_outcome = Outcome.OK
    state.last_error = ""
    state.consecutive_failures = 0
    state.next_attempt_at = None
    state.duration_ms = report.duration_ms
    state.counts = report.as_dict()
    state.requests = report.requests
    state.save()


def record_failure(state, failure, now, requests=0, started=None):
    state.consecutive_failures += 1
    state.last_outcome = failure.outcome[:30]
    state.last_error = upstream.scrub(failure.message)
    state.next_attempt_at = now + state.backoff(failure.retry_after, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS)
    state.requests = requests
    if started is not None:
        state.duration_ms = int((time.monotonic() - started) * 1000)
    state.save()
    log.warning("sync of %s failed: %s", state.organization.slug, state.last_error)


def sync_safely(organization, now=None, progress=None):
    """sync_organization, with every failure (the console's own exceptions included,
    scrubbed) recorded on the organization's state and returned in a Summary: one
    organization's trouble never stops the others."""
    now = now or timezone.now()
    summary = Summary()
    try:
        summary.reports[organization.slug] = sync_organization(organization, now, progress)
    except SyncFailure as e:
        summary.failed[organization.slug] = f"{e.outcome}: {e.message}"
    except Exception as e:  # noqa: BLE001 — one organization's trouble is its own
        failure = SyncFailure(Outcome.ERROR, upstream.scrub(f"{type(e).__name__}: {e}"))
        record_failure(state_of(organization), failure, now)
        summary.failed[organization.slug] = f"{failure.outcome}: {failure.message}"
    return summary


def run_scheduled(now=None):
    """What beat runs: every organization with an admin key that is not backing off."""
    now = now or timezone.now()
    summary = Summary()
    for organization in organizations_with_admin_keys():
        state = SyncState.objects.filter(organization=organization).first()
        if state is not None and not state.is_due(now):
            summary.skipped.append(organization.slug)
            continue
        summary.add(sync_safely(organization, now))
    return summary


def organization_by_slug(slug):
    return Organization.objects.by_slug(slug)
