"""Synthetic data for OpenAI's Usage and Costs APIs, and their paging.

A usage plan, registered for an admin key (POST /_sandbox/usage), names the
organization's projects, its keys (`key_…`, each in a project) and its models. Every
number the sandbox serves is a pure function of (plan seed, endpoint, day, project, key,
model): the SHA-256 of those, read as integers (see `base_metrics`). Two reads of a window
give identical bodies, and a test can compute any expected total with `daily_rows`.

Only whole UTC days carry data. A `1h` or `1m` bucket holds a day's numbers in the bucket
that starts at 12:00 UTC that day (the others are empty), so every width sums to the same
daily totals. Days after "now" are empty.

Late data: `bump(day, factor)` multiplies one day's numbers (every endpoint and costs) by
`factor` on every later read, as the real API reports a day's usage late.

Paging is by buckets, as upstream: `limit` buckets per page, `next_page` an opaque cursor
naming the first bucket of the next page (so re-reading with a cursor gives the same
page). Fault options on the plan: `repeat_cursor` (a page read with a cursor hands that
same cursor back as `next_page`) and `endless` (`has_more` true forever, with a fresh
cursor each page, past the end as empty pages — like the spec's own examples).

This module is part of the sandbox server: it imports nothing from the console.
"""

import base64
import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from operator import itemgetter

DAY = 86400
WIDTHS = {"1d": DAY, "1h": 3600, "1m": 60}
# (default, max) buckets per page, from the spec's parameter descriptions.
LIMITS = {"1d": (7, 31), "1h": (24, 168), "1m": (60, 1440)}
COSTS_LIMITS = (7, 180)
DATA_OFFSET = 12 * 3600  # where a day's numbers sit inside a 1h / 1m bucket

# USD per 1M tokens (input, output). Anything else: DEFAULT_PRICE.
PRICES = {
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4.1-mini": (Decimal("0.40"), Decimal("1.60")),
    "o3-mini": (Decimal("1.10"), Decimal("4.40")),
}
DEFAULT_PRICE = (Decimal("1.00"), Decimal("4.00"))
MILLION = Decimal(1_000_000)
CACHE_LIMIT = 1000  # days × endpoints of rows kept per plan
# Every row carries every dimension (ROW_DEFAULTS for those the synthetic data does not
# vary), so grouping and filtering read them directly.
DIMENSIONS = frozenset(
    ("project_id", "api_key_id", "model", "user_id", "batch", "service_tier", "size", "source", "line_item")
)


@dataclass(frozen=True)
class Endpoint:
    """One usage endpoint: its result object, which group_by fields the spec allows, and
    whether its rows are per key and model (True) or per project only (False)."""

    name: str
    group_by: tuple
    per_key: bool = True
    fixed_model: str | None = None  # the model its rows carry; None: the plan's models

    @property
    def object(self):
        return f"organization.usage.{self.name}.result"


KEY_FIELDS = ("project_id", "user_id", "api_key_id", "model")
ENDPOINTS = {
    e.name: e
    for e in [
        Endpoint("completions", KEY_FIELDS + ("batch", "service_tier")),
        Endpoint("embeddings", KEY_FIELDS, fixed_model="text-embedding-3-small"),
        Endpoint("moderations", KEY_FIELDS, fixed_model="omni-moderation-latest"),
        Endpoint("images", KEY_FIELDS + ("size", "source"), fixed_model="gpt-image-1"),
        Endpoint("audio_speeches", KEY_FIELDS, fixed_model="gpt-4o-mini-tts"),
        Endpoint("audio_transcriptions", KEY_FIELDS, fixed_model="gpt-4o-transcribe"),
        Endpoint("vector_stores", ("project_id",), per_key=False),
        Endpoint("code_interpreter_sessions", ("project_id",), per_key=False),
    ]
}
COSTS_GROUP_BY = ("project_id", "line_item", "api_key_id")
# The value a dimension takes in every synthetic row (shown when grouped by it).
ROW_DEFAULTS = {
    "user_id": None,
    "batch": False,
    "service_tier": "default",
    "size": "1024x1024",
    "source": "image.generation",
}


class UsageError(ValueError):
    """A query the API would refuse with 400; `param` names the parameter."""

    def __init__(self, message, param=None):
        super().__init__(message)
        self.param = param


@dataclass
class UsagePlan:
    """The synthetic organization behind one admin key."""

    keys: list  # [(key_id, project_id)]
    projects: list  # every project id (the keys' projects and any given alone)
    models: list
    seed: str = "sandbox"
    repeat_cursor: bool = False
    endless: bool = False
    bumps: dict = field(default_factory=dict)  # day start (unix) → factor
    # (endpoint, day, factor) → rows: a re-read (the trailing window, a benchmark's
    # re-ingest) costs no hashing. Bounded; keyed by the factor, so a bump never reads stale.
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def factor(self, day):
        return self.bumps.get(day, 1.0)


def build_usage_plan(
    keys=(), projects=(), models=("gpt-4o-mini",), seed="sandbox", repeat_cursor=False, endless=False, **unknown
):
    """Validate a registration; returns a UsagePlan. Raises UsageError."""
    if unknown:
        raise UsageError(f"Unknown field(s): {', '.join(sorted(unknown))}.")
    pairs = []
    for key in keys or ():
        if not isinstance(key, dict) or not isinstance(key.get("id"), str) or not isinstance(key.get("project"), str):
            raise UsageError('Each key is {"id": "key_…", "project": "proj_…"}.')
        pairs.append((key["id"], key["project"]))
    if not all(isinstance(p, str) for p in projects or ()) or not all(isinstance(m, str) for m in models or ()):
        raise UsageError("projects and models are lists of strings.")
    if not models:
        raise UsageError("Give at least one model.")
    if not isinstance(repeat_cursor, bool) or not isinstance(endless, bool):
        raise UsageError("repeat_cursor and endless are true or false.")
    all_projects = list(dict.fromkeys([p for _, p in pairs] + list(projects or ())))
    return UsagePlan(pairs, all_projects, list(models), str(seed), repeat_cursor, endless)


def base_metrics(seed, endpoint, day, project, key, model):
    """The day's numbers for one (project, key, model) before any bump: with h the first
    16 bytes of sha256("seed|endpoint|day|project|key|model") as a big-endian integer,
    requests = 1 + h % 100, input = requests × (100 + (h >> 8) % 900),
    output = requests × (20 + (h >> 20) % 300), cached = input × ((h >> 32) % 50) // 100."""
    text = f"{seed}|{endpoint}|{day}|{project}|{key}|{model}"
    h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")
    requests = 1 + h % 100
    input_tokens = requests * (100 + (h >> 8) % 900)
    return {
        "num_model_requests": requests,
        "input_tokens": input_tokens,
        "output_tokens": requests * (20 + (h >> 20) % 300),
        "input_cached_tokens": input_tokens * ((h >> 32) % 50) // 100,
    }


def scaled(metrics, factor):
    return {name: int(value * factor) for name, value in metrics.items()}


def endpoint_metrics(endpoint, m):
    """The endpoint's own result fields from the base numbers."""
    if endpoint == "completions":
        return {**m, "input_audio_tokens": 0, "output_audio_tokens": 0}
    if endpoint in ("embeddings", "moderations"):
        return {"input_tokens": m["input_tokens"], "num_model_requests": m["num_model_requests"]}
    if endpoint == "images":
        return {"images": m["num_model_requests"], "num_model_requests": m["num_model_requests"]}
    if endpoint == "audio_speeches":
        return {"characters": m["input_tokens"], "num_model_requests": m["num_model_requests"]}
    if endpoint == "audio_transcriptions":
        return {"seconds": m["output_tokens"], "num_model_requests": m["num_model_requests"]}
    if endpoint == "vector_stores":
        return {"usage_bytes": m["input_tokens"] * 1000}
    return {"num_sessions": m["num_model_requests"]}  # code_interpreter_sessions


def daily_rows(plan, endpoint, day):
    """Every synthetic row of one endpoint for the UTC day starting at `day`: dicts of the
    dimension fields (project_id, api_key_id, model; None where the endpoint has none)
    plus the endpoint's metrics, bumps applied."""
    return _cached(plan, endpoint, day, _daily_rows)


def _cached(plan, endpoint, day, build):
    factor = plan.factor(day)
    cached = plan.cache.get((endpoint, day, factor))
    if cached is None:
        if len(plan.cache) >= CACHE_LIMIT:
            plan.cache.clear()
        cached = plan.cache[(endpoint, day, factor)] = build(plan, endpoint, day, factor)
    return cached


def _daily_rows(plan, endpoint, day, factor):
    spec = ENDPOINTS[endpoint]
    rows = []
    if not spec.per_key:
        for project in plan.projects:
            m = scaled(base_metrics(plan.seed, endpoint, day, project, None, None), factor)
            rows.append(
                {
                    **ROW_DEFAULTS,
                    "project_id": project,
                    "api_key_id": None,
                    "model": None,
                    **endpoint_metrics(endpoint, m),
                }
            )
        return rows
    models = [spec.fixed_model] if spec.fixed_model else plan.models
    for key, project in plan.keys:
        for model in models:
            m = scaled(base_metrics(plan.seed, endpoint, day, project, key, model), factor)
            rows.append(
                {
                    **ROW_DEFAULTS,
                    "project_id": project,
                    "api_key_id": key,
                    "model": model,
                    **endpoint_metrics(endpoint, m),
                }
            )
    return rows


def price(model):
    return PRICES.get(model, DEFAULT_PRICE)


def daily_cost_rows(plan, day):
    """The day's cost rows, from its completions rows: per (project, key, model) a line
    item "<model>, input" of input_tokens × input price / 1M and "<model>, output" of
    output_tokens × output price / 1M (PRICES, USD; amounts are Decimals)."""
    return _cached(plan, "costs", day, _daily_cost_rows)


def _daily_cost_rows(plan, _endpoint, day, _factor):
    rows = []
    for row in daily_rows(plan, "completions", day):
        input_price, output_price = price(row["model"])
        for kind, tokens, unit in (
            ("input", row["input_tokens"], input_price),
            ("output", row["output_tokens"], output_price),
        ):
            rows.append(
                {
                    "project_id": row["project_id"],
                    "api_key_id": row["api_key_id"],
                    "model": row["model"],
                    "line_item": f"{row['model']}, {kind}",
                    "amount": tokens * unit / MILLION,
                }
            )
    return rows


# --- Queries ---------------------------------------------------------------------------


@dataclass
class Query:
    start_time: int
    end_time: int
    width: str
    limit: int
    group_by: tuple
    filters: dict  # field → set of accepted values
    page: str | None


def listed(params, name):
    """An array parameter in either encoding: `name=a&name=b` or `name[]=a&name[]=b`."""
    return params.getlist(name) + params.getlist(name + "[]")


def parse_query(params, now, endpoint=None):
    """The query of a usage endpoint (`endpoint` a name in ENDPOINTS) or of costs (None)
    from a Starlette QueryParams. Raises UsageError for what the API refuses with 400."""
    start_time = _time_param(params, "start_time", required=True)
    end_time = _time_param(params, "end_time") or now
    if end_time <= start_time:
        raise UsageError("end_time must be after start_time.", "end_time")
    width = params.get("bucket_width", "1d")
    allowed_widths = ("1d",) if endpoint is None else tuple(WIDTHS)
    if width not in allowed_widths:
        raise UsageError(f"Invalid bucket_width {width!r}: choose one of {', '.join(allowed_widths)}.", "bucket_width")
    default, maximum = COSTS_LIMITS if endpoint is None else LIMITS[width]
    limit = params.get("limit")
    if limit is None:
        limit = default
    else:
        try:
            limit = int(limit)
        except ValueError:
            raise UsageError("limit must be an integer.", "limit") from None
        if not 1 <= limit <= maximum:
            raise UsageError(f"limit must be between 1 and {maximum} for bucket_width={width}.", "limit")
    allowed = COSTS_GROUP_BY if endpoint is None else ENDPOINTS[endpoint].group_by
    group_by = tuple(dict.fromkeys(listed(params, "group_by")))
    for name in group_by:
        if name not in allowed:
            raise UsageError(f"Invalid group_by field {name!r}: choose from {', '.join(allowed)}.", "group_by")
    filters = {}
    for param, field_name in (
        ("project_ids", "project_id"),
        ("api_key_ids", "api_key_id"),
        ("models", "model"),
        ("user_ids", "user_id"),
        ("line_items", "line_item"),
    ):
        values = listed(params, param)
        if values:
            filters[field_name] = set(values)
    batch = params.get("batch")
    if batch is not None:
        if batch not in ("true", "false"):
            raise UsageError("batch must be true or false.", "batch")
        filters["batch"] = {batch == "true"}
    return Query(start_time, end_time, width, limit, group_by, filters, params.get("page"))


def _time_param(params, name, required=False):
    value = params.get(name)
    if value is None:
        if required:
            raise UsageError(f"Missing required parameter: '{name}'.", name)
        return None
    try:
        seconds = int(value)
    except ValueError:
        raise UsageError(f"Invalid '{name}': expected unix seconds (an integer).", name) from None
    if seconds < 0:
        raise UsageError(f"Invalid '{name}': must not be negative.", name)
    return seconds


def encode_cursor(bucket_start):
    return "page_" + base64.urlsafe_b64encode(f"v1:{bucket_start}".encode()).decode().rstrip("=")


def decode_cursor(cursor):
    body = cursor.removeprefix("page_")
    try:
        text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        version, _, start = text.partition(":")
        if version != "v1" or body == cursor:
            raise ValueError
        return int(start)
    except ValueError:
        raise UsageError("Invalid page cursor.", "page") from None


def page(plan, query, now, endpoint=None):
    """The UsageResponse body for `query` against `plan` (None: an organization without
    usage), an endpoint's or (endpoint None) the costs'."""
    width = WIDTHS[query.width]
    first = query.start_time - query.start_time % width
    start = first
    if query.page is not None:
        start = decode_cursor(query.page)
        endless = plan is not None and plan.endless
        if start < first or (start - first) % width or (start >= query.end_time and not endless):
            raise UsageError("Invalid page cursor for this query.", "page")
    starts = []
    bucket = start
    while bucket < query.end_time and len(starts) < query.limit:
        starts.append(bucket)
        bucket += width
    following = start + query.limit * width
    has_more = following < query.end_time
    data = [
        {
            "object": "bucket",
            "start_time": s,
            "end_time": s + width,
            "results": bucket_results(plan, query, s, width, now, endpoint),
        }
        for s in starts
    ]
    next_page = encode_cursor(following) if has_more else None
    if plan is not None and plan.endless:
        has_more, next_page = True, encode_cursor(following)
    if plan is not None and plan.repeat_cursor and query.page is not None:
        has_more, next_page = True, query.page
    return {"object": "page", "data": data, "has_more": has_more, "next_page": next_page}


def bucket_results(plan, query, start, width, now, endpoint):
    """The grouped results of one bucket: [] unless it holds a past day's data."""
    day = start - start % DAY
    holds_day = width == DAY or start == day + DATA_OFFSET
    if plan is None or not holds_day or day > now:
        return []
    rows = daily_cost_rows(plan, day) if endpoint is None else daily_rows(plan, endpoint, day)
    if query.filters:
        rows = [row for row in rows if all(row.get(name) in accepted for name, accepted in query.filters.items())]
    if not rows:
        return []
    fields = query.group_by
    groups = {}
    if fields:
        getter = itemgetter(*fields)
        for row in rows:
            key = getter(row)
            groups.setdefault(key if len(fields) > 1 else (key,), []).append(row)
    else:
        groups[()] = rows
    metrics = [name for name in rows[0] if name not in DIMENSIONS]
    return [result(endpoint, dict(zip(fields, key, strict=True)), members, metrics) for key, members in groups.items()]


def result(endpoint, grouped, rows, metrics):
    """One result object: the sums of `rows`' metrics, and the group-by fields (null
    unless grouped by)."""
    if endpoint is None:
        amount = rows[0]["amount"] if len(rows) == 1 else sum((row["amount"] for row in rows), Decimal(0))
        return {
            "object": "organization.costs.result",
            "amount": {"value": float(amount), "currency": "usd"},
            "line_item": grouped.get("line_item"),
            "project_id": grouped.get("project_id"),
            "api_key_id": grouped.get("api_key_id"),
            "quantity": None,
        }
    spec = ENDPOINTS[endpoint]
    body = {"object": spec.object}
    if len(rows) == 1:  # the common case when grouped by key and model: nothing to add up
        row = rows[0]
        for name in metrics:
            body[name] = row[name]
    else:
        for name in metrics:
            body[name] = sum(row[name] for row in rows)
    for name in spec.group_by:
        body[name] = grouped.get(name)
    return body
