"""Ingest daily usage and costs from OpenAI's Usage and Costs APIs.

For one organization with an active admin key (`ingest_organization`):

1. Every Usage endpoint (ENDPOINTS) with `bucket_width=1d`, grouped by project, key and
   model where the endpoint allows it, then the Costs endpoint grouped by project, line
   item and key, for the window [since, until). All through console.upstream (`Pool`,
   `paginate(style="page")`): the SDK builds each request; a repeated cursor or more than
   USAGE_MAX_PAGES pages stops with a PaginationError instead of looping.
2. Each page's results become rows keyed by their natural key (models.UsageBucket /
   CostBucket.NATURAL_KEY) and are upserted in bulk: rows that are new are created, rows
   whose values differ are updated, the rest are left alone and counted "unchanged".
   Re-running any window writes nothing. A page is stored as soon as it has arrived,
   while a background thread fetches the next (`fetch_and_store`); on PostgreSQL rows
   are written with COPY (`upsert`; docs/PERFORMANCE.md has the figures).
3. Upstream ids map to local projects (`openai_project_id`) and keys
   (`upstream_key_id`) of the organization; ids not registered here stay with their
   upstream id and no local link ("unregistered").
4. Each key's `last_used_at` becomes the newest bucket end with requests for it, and
   never moves backwards.

Failure is the organization's own: a 401/403, a 429 (with its retry-after), a 5xx, a
timeout, a malformed page, a pagination error or the console's own exception is recorded
on its IngestState with a scrubbed message and a next attempt (exponential backoff, never
sooner than retry-after); what was fetched before the failure is kept; the other
organizations go on. The API host's circuit breaker (keys.circuit) is honoured: nothing
is sent while it is open, and host failures count towards opening it.

`run_scheduled(mode, now)` is what beat runs (usage/tasks.py): "daily" re-reads the
trailing window (USAGE_TRAILING_DAYS) of every due organization, "today" refreshes today
only (organizations never ingested, or retrying after a failure, get their full window).
"""

import asyncio
import logging
import queue
import threading
import time
from collections import defaultdict
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from operator import itemgetter

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import BigIntegerField, F, Func, Q, Value
from django.db.models.functions import Cast, Extract
from django.utils import timezone

from accounts.models import Organization
from console import upstream
from console.upstream import Outcome, PaginationError
from keys import crypto
from keys.circuit import Breakers
from keys.models import ApiKey, Kind
from keys.probe import target_for

from .models import CostBucket, Endpoint, IngestState, UsageBucket

log = logging.getLogger(__name__)

# What each Usage endpoint may be grouped by (the SDK's `group_by` literals): project,
# key and model where allowed; vector stores and code interpreter sessions only by project.
BY_PROJECT_KEY_MODEL = ["project_id", "api_key_id", "model"]
ENDPOINTS = {
    Endpoint.COMPLETIONS: BY_PROJECT_KEY_MODEL,
    Endpoint.EMBEDDINGS: BY_PROJECT_KEY_MODEL,
    Endpoint.MODERATIONS: BY_PROJECT_KEY_MODEL,
    Endpoint.IMAGES: BY_PROJECT_KEY_MODEL,
    Endpoint.AUDIO_SPEECHES: BY_PROJECT_KEY_MODEL,
    Endpoint.AUDIO_TRANSCRIPTIONS: BY_PROJECT_KEY_MODEL,
    Endpoint.VECTOR_STORES: ["project_id"],
    Endpoint.CODE_INTERPRETER_SESSIONS: ["project_id"],
}
COSTS = "costs"
COSTS_GROUP_BY = ["project_id", "line_item", "api_key_id"]
# Daily buckets per page: the API's maximum for bucket_width=1d (fewest requests).
PAGE_LIMIT = 31
AMOUNT_PLACES = Decimal("1e-10")  # CostBucket.amount's decimal_places

# Backoff of a failing organization: 15 min, 30 min, 1 h, … up to 12 h; never sooner
# than the API's retry-after.
RETRY_BASE_SECONDS = 15 * 60
RETRY_MAX_SECONDS = 12 * 3600


class IngestFailure(Exception):
    """One organization's ingest could not complete. The message is scrubbed."""

    def __init__(self, outcome, message, retry_after=None, endpoint=""):
        super().__init__(message)
        self.outcome = str(outcome)
        self.message = message
        self.retry_after = retry_after
        self.endpoint = endpoint
        self.oversized = False  # a 200 cut short by the response cap (see fetch_all)


class CircuitOpen(Exception):
    pass


@dataclass
class Counts:
    """Per endpoint: time buckets and results read, and what the upsert did with them."""

    buckets: int = 0
    results: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def add(self, other):
        for name in ("buckets", "results", "created", "updated", "unchanged"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Summary:
    """What a run did: counts per endpoint, organizations done, failures by slug."""

    endpoints: dict = field(default_factory=lambda: defaultdict(Counts))
    succeeded: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)

    def add(self, other):
        for name, counts in other.endpoints.items():
            self.endpoints[name].add(counts)
        self.succeeded += other.succeeded
        self.failed.update(other.failed)
        self.skipped += other.skipped

    def total(self):
        total = Counts()
        for counts in self.endpoints.values():
            total.add(counts)
        return total


# --- windows ----------------------------------------------------------------------------
def day_start(moment):
    """Midnight UTC of the day `moment` falls in (buckets are UTC days)."""
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def default_window(state, now):
    """[since, until) for a scheduled run: through the end of today, from USAGE_TRAILING_DAYS
    before the end of the last complete window (or before today, whichever is earlier);
    an organization never ingested gets USAGE_BACKFILL_DAYS."""
    today = day_start(now)
    until = today + timedelta(days=1)
    if state is None or state.synced_until is None:
        return today - timedelta(days=settings.USAGE_BACKFILL_DAYS), until
    return min(day_start(state.synced_until), today) - timedelta(days=settings.USAGE_TRAILING_DAYS), until


def today_window(now):
    today = day_start(now)
    return today, today + timedelta(days=1)


# --- fetching ---------------------------------------------------------------------------
def page_fetcher(endpoint, since, until, breaker, limit=PAGE_LIMIT):
    """fetch(client, headers, cursor) for Pool.paginate: one page of one endpoint. Raises
    CircuitOpen instead of sending while the host's circuit is open."""
    resource_name = COSTS if endpoint == COSTS else str(endpoint)
    group_by = COSTS_GROUP_BY if endpoint == COSTS else ENDPOINTS[endpoint]
    start, end = int(since.timestamp()), int(until.timestamp())

    def fetch(client, headers, cursor):
        if not breaker.allow():
            raise CircuitOpen(breaker.host)
        method = getattr(client.admin.organization.usage.with_raw_response, resource_name)
        params = {"start_time": start, "end_time": end, "bucket_width": "1d", "group_by": group_by}
        params["limit"] = limit
        if cursor:
            params["page"] = cursor
        return method(**params, extra_headers=headers)

    return fetch


def is_page(body):
    """Is this the page envelope the API documents (buckets with results lists)?"""
    if not isinstance(body, dict) or body.get("object") != "page" or not isinstance(body.get("data"), list):
        return False
    return all(
        isinstance(b, dict)
        and isinstance(b.get("start_time"), int)
        and isinstance(b.get("end_time"), int)
        and isinstance(b.get("results"), list)
        and all(isinstance(r, dict) for r in b["results"])
        for b in body["data"]
    )


def failure_from_reply(endpoint, reply):
    where = f"{endpoint}: "
    if reply.outcome == Outcome.OK:
        return IngestFailure(
            Outcome.MALFORMED_RESPONSE,
            where + "the page was not the JSON the API documents (or exceeded the response size cap).",
            endpoint=endpoint,
        )
    status = f"HTTP {reply.http_status} " if reply.http_status else ""
    code = f"{reply.error_code}: " if reply.error_code else ""
    message = upstream.scrub(f"{where}{status}{code}{reply.message}")
    return IngestFailure(reply.outcome, message, retry_after=reply.retry_after, endpoint=endpoint)


def is_oversized(reply):
    """A 200 whose body did not parse: the pool stops reading a body at its size cap
    (settings.USAGE_MAX_BODY_BYTES), which cuts a big page's JSON short."""
    return reply.outcome == Outcome.OK and reply.body is None


async def fetch_endpoint(pool, target, endpoint, since, until, breaker, limit, on_page=None, stop=None):
    """One endpoint's pages for the window, and the IngestFailure that stopped it (or
    None). Pages fetched before a failure are returned too — or, with `on_page`, handed
    to it one by one as they arrive (and not returned). A set `stop` event ends the walk
    before the next page."""
    pages, failure = [], None
    walk = pool.paginate(
        target, page_fetcher(endpoint, since, until, breaker, limit), style="page", max_pages=settings.USAGE_MAX_PAGES
    )
    try:
        async with aclosing(walk) as replies:
            async for reply in replies:
                breaker.record(reply.outcome, timezone.now())
                if reply.outcome != Outcome.OK or not is_page(reply.body):
                    failure = failure_from_reply(endpoint, reply)
                    failure.oversized = is_oversized(reply)
                    break
                if on_page is None:
                    pages.append(reply.body)
                else:
                    on_page(reply.body)
                if stop is not None and stop.is_set():
                    break
    except PaginationError as e:
        failure = IngestFailure("pagination_error", upstream.scrub(f"{endpoint}: {e}"), endpoint=endpoint)
    except CircuitOpen as e:
        failure = IngestFailure(
            Outcome.SKIPPED_CIRCUIT_OPEN, f"{endpoint}: the circuit for {e} is open.", endpoint=endpoint
        )
    return pages, failure


async def fetch_all(target, since, until, breaker, endpoints, on_pages=None, stop=None):
    """Every endpoint's pages for the window, in order, as [(endpoint, [body, …]), …], and
    the IngestFailure that stopped it (None if none did). Pages fetched before a failure
    are returned too. Never raises for upstream trouble.

    With `on_pages(endpoint, [body])`, each page is handed over as soon as it has arrived
    instead (nothing is returned in the list), and every endpoint walked is handed over at
    least once (`[]` when it had no buckets), so its counts exist; a set `stop` event
    ends the walk before the next page.

    A page too big for the pool's response cap is asked for again with half as many
    buckets per page (the endpoint starts over), down to one day per page; a single day
    still too big is a failure. Buckets already handed over are not handed over again."""
    fetched, failure = [], None
    async with upstream.Pool(max_body_bytes=settings.USAGE_MAX_BODY_BYTES) as pool:
        days = max(-(-(until - since) // timedelta(days=1)), 1)
        for endpoint in endpoints:
            if stop is not None and stop.is_set():
                break
            limit = min(PAGE_LIMIT, days)
            handed = {"until": None, "any": False}  # the last bucket start handed over

            def hand_over(body, endpoint=endpoint, handed=handed):
                buckets = body["data"]
                if handed["until"] is not None:
                    buckets = [b for b in buckets if b["start_time"] > handed["until"]]
                if buckets:
                    on_pages(endpoint, [{**body, "data": buckets}])
                    handed["until"], handed["any"] = max(b["start_time"] for b in buckets), True

            while True:
                pages, failure = await fetch_endpoint(
                    pool, target, endpoint, since, until, breaker, limit, hand_over if on_pages else None, stop
                )
                if failure is None or not failure.oversized or limit == 1:
                    break
                limit //= 2
            if on_pages is None:
                fetched.append((endpoint, pages))
            elif not handed["any"]:
                on_pages(endpoint, [])
            if failure is not None:
                break
    return fetched, failure


def fetch_and_store(organization, target, since, until, breaker, endpoints, now, progress=None):
    """Fetch the pages in a background thread while this one stores each page as soon as
    it has arrived: the database writes of one page overlap the fetching of the next.
    Returns ({endpoint: Counts}, the IngestFailure or None). The thread touches no
    database; a store that raises stops it before its next page and is raised here once
    it has finished.

    `progress(total=None, done=0, step=None)`, if given, hears of the endpoints (the
    total), of each page stored (the step: the endpoint and its buckets so far), and of
    each endpoint done; it is called in this thread, never in the fetching one."""
    ready, stop, outcome = queue.Queue(), threading.Event(), {}

    def fetch():
        try:
            outcome["result"] = asyncio.run(
                fetch_all(target, since, until, breaker, endpoints, lambda e, p: ready.put((e, p)), stop)
            )
        except BaseException as e:  # noqa: BLE001 — raised again in the storing thread
            outcome["error"] = e
        finally:
            ready.put(None)

    thread = threading.Thread(target=fetch, name=f"usage-fetch-{organization.slug}", daemon=True)
    thread.start()
    counts = defaultdict(Counts)
    report = progress or (lambda total=None, done=0, step=None: None)
    report(total=len(endpoints))
    current = None
    try:
        while (item := ready.get()) is not None:
            if current is not None and item[0] != current:
                report(done=1)  # every endpoint walked is handed over (fetch_all)
            current = item[0]
            for name, page_counts in store(organization, [item], now).items():
                counts[name].add(page_counts)
            report(step=f"{current}: {counts[str(current)].buckets} buckets read")
        if current is not None and "error" not in outcome and outcome["result"][1] is None:
            report(done=1)
    finally:
        stop.set()  # after a failed store: no further page is fetched
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return dict(counts), outcome["result"][1]


# --- rows -------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _ts(value):
    return datetime.fromtimestamp(value, tz=UTC)


def _id(value, length=100):
    return str(value)[:length] if value not in (None, "") else ""


def _count(value):
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def to_amount(value):
    """The API's float amount as a Decimal with CostBucket's precision (0 if absent):
    the same float always gives the same Decimal, so a re-read compares equal."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return Decimal(0)
    try:
        return Decimal(repr(value) if isinstance(value, float) else str(value)).quantize(AMOUNT_PLACES)
    except InvalidOperation:
        return Decimal(0)


class Directory:
    """Upstream id → local project / key, for one organization."""

    def __init__(self, organization):
        self.projects = dict(organization.projects.exclude(openai_project_id="").values_list("openai_project_id", "pk"))
        # Newest registration wins when (against advice) one upstream id is registered twice.
        self.keys = dict(
            ApiKey.objects.filter(organization=organization)
            .exclude(upstream_key_id="")
            .order_by("created")
            .values_list("upstream_key_id", "pk")
        )

    def project(self, upstream_id):
        return self.projects.get(upstream_id) if upstream_id else None

    def key(self, upstream_id):
        return self.keys.get(upstream_id) if upstream_id else None


def usage_rows(organization, endpoint, pages, directory, now):
    """UsageBucket rows for the pages of one endpoint, and the bucket count. A row is a
    dict of column values by attribute name (`project_id`, `model`, …), not a model
    instance: building a few hundred thousand instances costs more than writing them."""
    rows, buckets = [], 0
    endpoint, org_id, counts = str(endpoint), organization.pk, UsageBucket.COUNTS
    for page in pages:
        for bucket in page["data"]:
            buckets += 1
            start, end = _ts(bucket["start_time"]), _ts(bucket["end_time"])
            for r in bucket["results"]:
                project_id, key_id = _id(r.get("project_id")), _id(r.get("api_key_id"))
                row = {}
                for name in counts:
                    value = r.get(name)
                    row[name] = value if type(value) is int else _count(value)  # an int: as is
                if row["num_sessions"] is None:
                    row["num_sessions"] = _count(r.get("sessions"))  # the spec's older name
                row.update(
                    organization_id=org_id,
                    endpoint=endpoint,
                    start_time=start,
                    end_time=end,
                    upstream_project_id=project_id,
                    upstream_key_id=key_id,
                    upstream_user_id=_id(r.get("user_id")),
                    model=_id(r.get("model"), 200),
                    project_id=directory.project(project_id),
                    key_id=directory.key(key_id),
                    ingested_at=now,
                )
                rows.append(row)
    return rows, buckets


def cost_rows(organization, pages, directory, now):
    """CostBucket rows (dicts, as usage_rows) for the pages, and the bucket count."""
    rows, buckets = [], 0
    org_id = organization.pk
    for page in pages:
        for bucket in page["data"]:
            buckets += 1
            start, end = _ts(bucket["start_time"]), _ts(bucket["end_time"])
            for r in bucket["results"]:
                project_id, key_id = _id(r.get("project_id")), _id(r.get("api_key_id"))
                amount = r.get("amount") if isinstance(r.get("amount"), dict) else {}
                rows.append(
                    {
                        "organization_id": org_id,
                        "start_time": start,
                        "end_time": end,
                        "upstream_project_id": project_id,
                        "upstream_key_id": key_id,
                        "line_item": _id(r.get("line_item"), 200),
                        "amount": to_amount(amount.get("value")),
                        "currency": _id(amount.get("currency"), 10).lower() or "usd",
                        "project_id": directory.project(project_id),
                        "key_id": directory.key(key_id),
                        "ingested_at": now,
                    }
                )
    return rows, buckets


TIME_COLUMNS = ("start_time", "end_time")


def _column(name):
    """The attribute holding a field's value: the id for a foreign key."""
    return f"{name}_id" if name in ("organization", "project", "key") else name


def _getter(names):
    """A function giving a row's values of `names` as a tuple (itemgetter gives a bare
    value for one name)."""
    columns = [_column(n) for n in names]
    if len(columns) == 1:
        return lambda row: (row[columns[0]],)
    return itemgetter(*columns)


def epoch_seconds(name):
    """The datetime column `name` as whole Unix seconds, in SQL. SQLite (`make run`'s
    database) has no EXTRACT(EPOCH …): Django's SQLite Extract fails on "epoch" as soon as
    a row is read, so every re-read of a stored day failed there; strftime('%s') is its
    equivalent (Django stores UTC text that SQLite's date functions read)."""
    if connection.vendor == "sqlite":
        return Cast(Func(Value("%s"), F(name), function="strftime"), BigIntegerField())
    return Cast(Extract(name, "epoch"), BigIntegerField())


def upsert(model, organization, rows, scope=None):
    """Write `rows` (column dicts of `model`, all of `organization`) on their natural key.
    Returns Counts(created, updated, unchanged). The rows stored for the window's days
    are read in one query and compared in memory; only rows that are new or differ are
    sent — on PostgreSQL COPYed into a temporary table and merged with one INSERT …
    SELECT … ON CONFLICT DO UPDATE (bulk_create's ON CONFLICT elsewhere) — so a re-read
    writes nothing and two runs at once cannot duplicate a row."""
    counts = Counts(results=len(rows))
    if not rows:
        return counts
    natural_of, values_of = _getter(model.NATURAL_KEY), _getter(model.VALUES)
    # One row per natural key (a misbehaving API could repeat one; the last wins).
    by_key = {natural_of(row): row for row in rows}
    natural_names = [_column(n) for n in model.NATURAL_KEY]
    value_names = [_column(n) for n in model.VALUES]
    split = len(natural_names)
    existing = {}
    starts = {row["start_time"] for row in by_key.values()}
    query = model.objects.filter(organization=organization, start_time__in=starts, **(scope or {})).order_by()
    # Bucket times come back as epoch seconds (parsing a timestamp per row costs more than
    # the rest of the compare); the few distinct ones become datetimes through _ts's cache.
    epochs = {name: f"{name}_epoch" for name in TIME_COLUMNS}
    query = query.annotate(**{alias: epoch_seconds(name) for name, alias in epochs.items()})
    names = [epochs.get(n, n) for n in (*natural_names, *value_names)]
    times = [i for i, n in enumerate((*natural_names, *value_names)) if n in epochs]
    for values in query.values_list(*names).iterator(chunk_size=10000):
        values = list(values)
        for i in times:
            values[i] = _ts(values[i])
        existing[tuple(values[:split])] = tuple(values[split:])
    new, changed = [], []
    for nk, row in by_key.items():
        old = existing.get(nk)
        if old is None:
            new.append(row)
        elif old != values_of(row):
            changed.append(row)
    counts.created, counts.updated = len(new), len(changed)
    counts.unchanged = len(rows) - len(new) - len(changed)
    if connection.vendor == "postgresql":
        # New rows are COPYed straight in; should another run have stored one meanwhile,
        # they are merged on the natural key with the changed ones instead.
        if new and not copy_insert(model, new):
            changed += new
        if changed:
            copy_upsert(model, changed)
    elif new or changed:
        model.objects.bulk_create(
            [model(**row) for row in new + changed],
            update_conflicts=True,
            unique_fields=list(model.NATURAL_KEY),
            update_fields=[*model.VALUES, "ingested_at"],
            batch_size=1000,
        )
    return counts


# PostgreSQL type names as Django declares them → as the driver knows them.
COPY_TYPES = {"bigint": "int8", "integer": "int4", "smallint": "int2", "timestamp with time zone": "timestamptz"}


def _copy_into(cursor, model, table, rows):
    """COPY `rows` (column dicts of `model`) into `table`, which has `model`'s columns."""
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    attnames = [f.attname for f in fields]
    # Django translates the driver's errors around execute() only: here too (IntegrityError).
    with connection.wrap_database_errors, cursor.copy(f"COPY {quote(table)} ({columns}) FROM STDIN") as copy:
        # Declared column types: the driver picks each column's dumper once, not per value.
        copy.set_types([COPY_TYPES.get(t, t) for t in (f.db_type(connection).split("(")[0] for f in fields)])
        for row in rows:
            copy.write_row([row[a] for a in attnames])
    return columns


def copy_insert(model, rows):
    """PostgreSQL: COPY rows that were not stored a moment ago straight into the table.
    Returns False, having written nothing, when one was stored meanwhile (another run at
    the same time: the unique natural key refuses it)."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            _copy_into(cursor, model, model._meta.db_table, rows)
    except IntegrityError:
        return False
    return True


def copy_upsert(model, rows):
    """PostgreSQL: COPY `rows` into a temporary table shaped like `model`'s, then one
    INSERT … SELECT … ON CONFLICT (natural key) DO UPDATE of the value columns. The
    temporary table lives for this transaction only."""
    quote = connection.ops.quote_name
    table, temp = model._meta.db_table, f"upsert_{model._meta.db_table}"
    conflict = ", ".join(quote(model._meta.get_field(n).column) for n in model.NATURAL_KEY)
    updates = ", ".join(
        f"{quote(c)} = EXCLUDED.{quote(c)}"
        for c in (model._meta.get_field(n).column for n in (*model.VALUES, "ingested_at"))
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE {quote(temp)} ON COMMIT DROP AS SELECT * FROM {quote(table)} WITH NO DATA"
        )
        columns = _copy_into(cursor, model, temp, rows)
        cursor.execute(
            f"INSERT INTO {quote(table)} ({columns}) SELECT {columns} FROM {quote(temp)} "
            f"ON CONFLICT ({conflict}) DO UPDATE SET {updates}"
        )
        cursor.execute(f"DROP TABLE {quote(temp)}")


def mark_keys_used(rows):
    """Each key's last_used_at: the newest bucket end with requests for it among `rows`,
    never earlier than what it already holds. Returns how many keys moved."""
    newest = {}
    for row in rows:
        key_id = row["key_id"]
        if key_id and (row["num_model_requests"] or 0) > 0:
            newest[key_id] = max(newest.get(key_id, row["end_time"]), row["end_time"])
    by_time = defaultdict(list)
    for key_id, at in newest.items():
        by_time[at].append(key_id)
    moved = 0
    for at, key_ids in by_time.items():
        moved += ApiKey.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=at), pk__in=key_ids).update(
            last_used_at=at
        )
    return moved


def store(organization, fetched, now):
    """Upsert what was fetched; returns {endpoint: Counts}."""
    directory = Directory(organization)
    result = {}
    for endpoint, pages in fetched:
        with transaction.atomic():
            if endpoint == COSTS:
                rows, buckets = cost_rows(organization, pages, directory, now)
                counts = upsert(CostBucket, organization, rows)
            else:
                rows, buckets = usage_rows(organization, endpoint, pages, directory, now)
                counts = upsert(UsageBucket, organization, rows, scope={"endpoint": endpoint})
                mark_keys_used(rows)
        counts.buckets = buckets
        result[str(endpoint)] = counts
    return result


# --- one organization -----------------------------------------------------------------
def admin_key_of(organization):
    """The organization's active admin key (the newest), or None."""
    return (
        ApiKey.objects.filter(organization=organization, kind=Kind.ADMIN, revoked_at__isnull=True)
        .select_related("organization")
        .order_by("-created")
        .first()
    )


def organizations_with_admin_keys():
    return Organization.objects.filter(
        pk__in=ApiKey.objects.filter(kind=Kind.ADMIN, revoked_at__isnull=True).values("organization_id")
    ).order_by("name")


def state_of(organization):
    return IngestState.objects.get_or_create(organization=organization)[0]


def ingest_organization(organization, since, until, now=None, endpoints=None, progress=None):
    """Ingest [since, until) for one organization and record the outcome on its
    IngestState. Returns a Summary; never raises for upstream trouble (the failure is in
    `summary.failed[slug]` and on the state). Raises ValueError if it has no active
    admin key. `progress`: see fetch_and_store."""
    started = time.monotonic()
    now = now or timezone.now()
    key = admin_key_of(organization)
    if key is None:
        raise ValueError(f"Organization “{organization.slug}” has no active admin key.")
    state = state_of(organization)
    state.last_attempt_at = now
    summary = Summary()
    host = upstream.host_of(key.provider, key.base_url, key.azure_endpoint)
    breakers = Breakers.load({host}, now=now)
    stored, failure = {}, None
    try:
        secret = key.reveal_secret()
        try:
            target = target_for(key, secret)
        finally:
            del secret
        stored, failure = fetch_and_store(
            organization, target, since, until, breakers[host], endpoints or [*ENDPOINTS, COSTS], now, progress
        )
        del target
    except crypto.DecryptionError as e:
        failure = IngestFailure(Outcome.DECRYPTION_FAILED, str(e)[:500])
    finally:
        # Whatever happened, what this run saw of the host (or a trial it won and never
        # sent) goes back to the shared circuit.
        breakers.save(now=timezone.now())
    for name, counts in stored.items():
        summary.endpoints[name].add(counts)
    state.last_duration_ms = round((time.monotonic() - started) * 1000)
    state.last_counts = asdict(summary.total())
    if failure is None:
        record_success(state, until, now)
        summary.succeeded.append(organization.slug)
    else:
        record_failure(state, failure, now, open_until=breakers[host].open_until)
        summary.failed[organization.slug] = f"{failure.outcome}: {failure.message}"
    return summary


def record_success(state, until, now):
    state.last_success_at = now
    state.synced_until = max(state.synced_until or until, until)
    state.last_outcome = Outcome.OK
    state.last_error = ""
    state.consecutive_failures = 0
    state.next_attempt_at = None
    state.save()


def record_failure(state, failure, now, open_until=None):
    """The organization's failure, on its state: a scrubbed message and the next attempt
    (backoff; after retry-after; after the circuit's cool-down when it is open)."""
    state.consecutive_failures += 1
    state.last_outcome = failure.outcome[:30]
    state.last_error = upstream.scrub(failure.message)
    at = now + state.backoff(failure.retry_after, RETRY_BASE_SECONDS, RETRY_MAX_SECONDS)
    if failure.outcome == Outcome.SKIPPED_CIRCUIT_OPEN and open_until:
        at = max(at, open_until)
    state.next_attempt_at = at
    state.save()
    log.warning("usage ingest of %s failed: %s", state.organization.slug, state.last_error)


def ingest_safely(organization, since, until, now, progress=None):
    """ingest_organization, with the console's own exceptions recorded on the state as
    an `error` (its next attempt pushed forward) instead of raised: one organization's
    trouble never stops the others."""
    try:
        return ingest_organization(organization, since, until, now=now, progress=progress)
    except Exception as e:  # noqa: BLE001 — one organization's trouble is its own
        failure = IngestFailure(Outcome.ERROR, upstream.scrub(f"{type(e).__name__}: {e}"))
        # The scrubbed message only: a traceback could carry what an exception held.
        record_failure(state_of(organization), failure, now)
        summary = Summary()
        summary.failed[organization.slug] = f"{failure.outcome}: {failure.message}"
        return summary


def run_scheduled(mode, now=None):
    """What beat runs. mode "daily": every due organization's default window (the
    trailing days re-read); "today": today only, except for organizations never ingested
    or retrying after a failure (their default window). Organizations still backing off
    (next_attempt_at in the future) are skipped."""
    now = now or timezone.now()
    summary = Summary()
    for organization in organizations_with_admin_keys():
        state = IngestState.objects.filter(organization=organization).first()
        if state is not None and not state.is_due(now):
            summary.skipped.append(organization.slug)
            continue
        if mode == "today" and state is not None and state.synced_until and not state.is_failing():
            since, until = today_window(now)
        else:
            since, until = default_window(state, now)
        summary.add(ingest_safely(organization, since, until, now))
    return summary
