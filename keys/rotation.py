"""Rotating, revoking and retiring keys: the logic behind the key admin's Rotate and
Revoke pages and the grace-period task. Every step is idempotent.

- `rotate(key, secret, actor)`: the new secret is validated like a registration (format,
  duplicates — against every key's current AND superseded secrets), encrypted for this
  key (same key id and destination in its associated data) and probed FIRST, from
  memory. Only an OK probe lets it in: in one transaction the old secret moves, still
  encrypted, into a SupersededSecret row (working until `grace_until`), the key takes
  the new one, and the history (KeyEvent ROTATED) and the audit log ("key.rotated", old
  and new hint) are written. Anything else changes nothing and says why.
- `end_grace(superseded_id)`, run by the scheduled task for every superseded secret whose
  grace is over: deletes it upstream where the Admin API allows (the organization has
  an admin key and the row an upstream id), marks it revoked and wipes its ciphertext.
  A claim (compare-and-swap on `claimed_until`) keeps runs apart; the DELETE is marked
  as sent before it is sent, so a run after a crash asks upstream first and never
  deletes twice.
- `revoke(key, actor, reason)`: revoked at once (no next probe, never "failing"), its
  superseded secrets' grace ends now, optionally deleted upstream.

The history rows written here (KeyEvent) are what the rotation report recomputes past
states from. No secret ever reaches a row, an event, a message or a log.
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts.models import AuditEvent
from console import upstream
from console.upstream import RESULT_FIELDS, Outcome

from . import upstream_keys
from .models import ApiKey, KeyAction, KeyEvent, Kind, ProbeResult, Provider, SupersededSecret
from .probe import target_for

log = logging.getLogger(__name__)

TASK_LABEL = "task:end_grace"


class RotationRefused(Exception):
    """A rotation or revocation that did not happen; the message says why (never a secret)."""

    REVOKED = "This key is revoked: its secret can no longer be replaced."


def grace_period():
    return timedelta(hours=settings.ROTATION_GRACE_HOURS)


def actor_label(actor):
    if getattr(actor, "pk", None) and hasattr(actor, "get_username"):
        return actor.get_username()
    return str(actor or "system")


def record_event(key, action, actor, at=None, **fields):
    """Append one row to a key's history (KeyEvent). `actor` is a User or a label."""
    user = actor if getattr(actor, "pk", None) and hasattr(actor, "get_username") else None
    return KeyEvent.objects.create(
        key_id=key.pk,
        action=action,
        actor=user,
        actor_label=actor_label(actor)[:150],
        at=at or timezone.now(),
        **fields,
    )


# --- rotate ---------------------------------------------------------------------------
@sensitive_variables("secret")
def prepare(key, secret):
    """The new secret, validated and encrypted for `key`, on an unsaved ApiKey (the key is
    not touched). Raises RotationRefused with the reason."""
    if key.is_revoked():
        raise RotationRefused(RotationRefused.REVOKED)
    candidate = ApiKey(
        pk=key.pk,
        organization=key.organization,
        project=key.project,
        kind=key.kind,
        provider=key.provider,
        base_url=key.base_url,
        azure_endpoint=key.azure_endpoint,
        azure_api_version=key.azure_api_version,
    )
    try:
        candidate.set_secret(secret)
    except ValidationError as e:
        raise RotationRefused(" ".join(e.message_dict.get("secret", e.messages))) from None
    current = ApiKey.objects.filter(fingerprint=candidate.fingerprint).select_related("organization", "project").first()
    if current is not None:
        if current.pk == key.pk:
            raise RotationRefused("This is the key's current secret: paste the new one.")
        where = f"project “{current.project}”" if current.project_id else f"organization “{current.organization}”"
        raise RotationRefused(f"This secret is already registered as “{current.name}” in {where}.")
    old = SupersededSecret.objects.filter(fingerprint=candidate.fingerprint).select_related("key").first()
    if old is not None:
        if old.key_id == key.pk:
            raise RotationRefused("This is one of this key's earlier secrets: rotate to a new one.")
        raise RotationRefused(f"This secret was an earlier secret of the key “{old.key.name}”.")
    return candidate


@sensitive_variables("secret")
def probe_secret(candidate, secret):
    """Probe a secret that is not stored yet (the key's usual free call). Returns the Reply."""
    target = target_for(candidate, secret)

    async def run():
        async with upstream.Pool() as pool:
            return await pool.probe(target)

    try:
        return asyncio.run(run())
    except Exception as e:  # noqa: BLE001 — whatever the probe raised is its outcome, scrubbed
        return upstream.Reply(outcome=Outcome.ERROR, message=upstream.scrub(f"{type(e).__name__}: {e}", secret))


def outcome_label(outcome):
    return Outcome(outcome).label if outcome in Outcome.values else outcome


@dataclass
class Rotated:
    key: ApiKey
    superseded: SupersededSecret
    old_hint: str
    new_hint: str
    grace_until: object


@sensitive_variables("secret")
def rotate(key, secret, actor, upstream_key_id="", now=None, via="console"):
    """Replace `key`'s secret with `secret` after a successful probe of it. Returns a
    Rotated; raises RotationRefused (nothing changed) otherwise."""
    key = ApiKey.objects.select_related("organization", "project").get(pk=key.pk)
    candidate = prepare(key, secret)
    reply = probe_secret(candidate, secret)
    if reply.outcome != Outcome.OK:
        AuditEvent.record(
            actor,
            "key.rotation_refused",
            key,
            hint=key.hint,
            new_hint=candidate.hint,
            outcome=reply.outcome,
            message=reply.message,
            via=via,
        )
        detail = f": {reply.message}" if reply.message else ""
        raise RotationRefused(
            f"Nothing was changed: the new secret's probe said “{outcome_label(reply.outcome)}”{detail}"
        )
    return supersede(key, candidate, reply, actor, upstream_key_id=upstream_key_id, now=now, via=via)


def supersede(key, candidate, reply, actor, upstream_key_id="", now=None, via="console"):
    """The swap, in one transaction: the old secret becomes a SupersededSecret in grace,
    the key takes `candidate`'s secret (probed OK with `reply`), history and audit are
    written. Refuses if the key was revoked or rotated by someone else meanwhile."""
    now = now or timezone.now()
    grace_until = now + grace_period()
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update().get(pk=key.pk)
        if locked.is_revoked():
            raise RotationRefused("This key was revoked meanwhile: nothing was changed.")
        if locked.fingerprint != key.fingerprint:
            raise RotationRefused("This key was rotated by someone else meanwhile: nothing was changed.")
        superseded = SupersededSecret.objects.create(
            key=locked,
            secret_ciphertext=locked.secret_ciphertext,
            secret_key_version=locked.secret_key_version,
            fingerprint=locked.fingerprint,
            hint=locked.hint,
            upstream_key_id=locked.upstream_key_id,
            superseded_at=now,
            grace_until=grace_until,
        )
        old_hint = locked.hint
        for name in ("secret_ciphertext", "secret_key_version", "fingerprint", "hint"):
            setattr(locked, name, getattr(candidate, name))
        locked.upstream_key_id = upstream_key_id
        locked.rotated_at = now
        locked.rotated_by = actor_label(actor)[:150]
        locked.last_probe_at = locked.last_success_at = now
        locked.last_probe_outcome = Outcome.OK
        locked.consecutive_failures = 0
        locked.next_probe_at = now + timedelta(seconds=settings.PROBE_INTERVAL_SECONDS)
        locked.save(
            update_fields=[
                "secret_ciphertext",
                "secret_key_version",
                "fingerprint",
                "hint",
                "upstream_key_id",
                "rotated_at",
                "rotated_by",
                "last_probe_at",
                "last_success_at",
                "last_probe_outcome",
                "consecutive_failures",
                "next_probe_at",
            ]
        )
        record_event(
            locked, KeyAction.ROTATED, actor, at=now, old_hint=old_hint, new_hint=locked.hint, grace_until=grace_until
        )
        AuditEvent.record(
            actor,
            "key.rotated",
            locked,
            **locked.audit_details(),
            old_hint=old_hint,
            new_hint=locked.hint,
            grace_until=grace_until.isoformat(),
            via=via,
        )
        # The probe that let the secret in, labelled with the secret it probed.
        ProbeResult.objects.bulk_create(
            [
                ProbeResult(
                    key=locked,
                    slot=int(now.timestamp()),
                    started_at=now,
                    outcome=reply.outcome,
                    secret_hint=locked.hint,
                    **{f: getattr(reply, f) for f in RESULT_FIELDS if getattr(reply, f) is not None},
                )
            ],
            ignore_conflicts=True,
        )
    return Rotated(locked, superseded, old_hint, locked.hint, grace_until)


# --- rotate via the Administration API ----------------------------------------------------
PROJECT_KEY_NOT_ISSUABLE = (
    "A project key belongs to a user, and the Administration API cannot create one (OpenAI's spec has no "
    "endpoint for it): create the new key in the OpenAI dashboard and use “Rotate key” to paste it."
)


def api_rotation_available(key):
    """(True, "") when "Rotate via API" can replace this key, else (False, why not)."""
    if key.is_revoked():
        return False, RotationRefused.REVOKED
    if key.provider != Provider.OPENAI:
        return False, "Azure OpenAI keys are not issued by OpenAI's Administration API."
    if key.kind == Kind.PROJECT:
        return False, PROJECT_KEY_NOT_ISSUABLE
    if key.kind == Kind.SERVICE_ACCOUNT and not (key.project_id and key.project.openai_project_id):
        return False, "Its project has no OpenAI project id."
    if upstream_keys.admin_key_for(key.organization) is None:
        return False, "The organization has no active admin key."
    return True, ""


@sensitive_variables("issued")
def rotate_via_api(key, actor, now=None):
    """Replace `key` with a new key the Administration API creates (a new service account
    in its project, or a new admin key). The new secret is never shown: it is encrypted,
    probed and swapped in like a pasted one (the old key is deleted upstream when its
    grace ends). If it cannot be put in, the key just created is deleted upstream again
    and RotationRefused says why."""
    key = ApiKey.objects.select_related("organization", "project").get(pk=key.pk)
    ok, why_not = api_rotation_available(key)
    if not ok:
        raise RotationRefused(why_not)
    admin_key = upstream_keys.admin_key_for(key.organization)
    now = now or timezone.now()
    name = f"{key.name} (rotated {now:%Y-%m-%d %H:%M})"[:200]
    issued = upstream_keys.issue(admin_key, key, name)
    if not issued.secret:
        reply = issued.reply
        detail = f": {reply.message}" if reply.message else ""
        raise RotationRefused(
            f"Nothing was changed: the Administration API did not create a key (“{outcome_label(reply.outcome)}”"
            f"{detail})."
        )
    try:
        return _put_in(key, issued, actor, now)
    except RotationRefused as refused:
        note = withdraw(admin_key, key, issued.upstream_id)
        raise RotationRefused(f"{refused} {note}") from None
    finally:
        issued.secret = ""


@sensitive_variables("issued")
def _put_in(key, issued, actor, now):
    try:
        candidate = prepare(key, issued.secret)
    except RotationRefused as e:
        raise RotationRefused(f"The key the Administration API created was refused: {e}") from None
    reply = probe_secret(candidate, issued.secret)
    if reply.outcome != Outcome.OK:
        AuditEvent.record(
            actor,
            "key.rotation_refused",
            key,
            hint=key.hint,
            new_hint=candidate.hint,
            outcome=reply.outcome,
            message=reply.message,
            via="api",
        )
        raise RotationRefused(f"Nothing was changed: the new key's probe said “{outcome_label(reply.outcome)}”.")
    return supersede(key, candidate, reply, actor, upstream_key_id=issued.upstream_id, now=now, via="api")


def withdraw(admin_key, key, upstream_id):
    """Delete a key just created upstream that could not be put in. Returns a sentence."""
    project_id = key.project.openai_project_id if key.project_id else ""
    what, reason = upstream_keys.where_to_delete(key.kind, project_id, upstream_id)
    if what is not None and upstream_keys.delete(admin_key, what, project_id).outcome in (
        Outcome.OK,
        Outcome.NOT_FOUND,
    ):
        return f"The key created upstream ({upstream_id}) was deleted again."
    log.warning("key %s: could not withdraw the upstream key %s it just created", key.pk, upstream_id)
    return f"The key created upstream ({upstream_id}) could not be deleted again: delete it in the dashboard."


# --- grace end ------------------------------------------------------------------------
def claim_seconds():
    """How long one grace-end run holds a row: two upstream calls at their timeouts, and
    a margin. A crashed run's claim expires after this; the next run takes over."""
    per_call = settings.UPSTREAM_CONNECT_TIMEOUT + settings.UPSTREAM_READ_TIMEOUT
    return 2 * per_call + 10


def due_superseded(now):
    """Ids of superseded secrets whose grace is over and that are not revoked yet."""
    return list(
        SupersededSecret.objects.filter(grace_until__lte=now, revoked_at__isnull=True)
        .order_by("grace_until")
        .values_list("pk", flat=True)
    )


def end_grace_periods(now=None):
    """Retire every superseded secret whose grace is over. Returns {outcome: count}."""
    now = now or timezone.now()
    counts = {}
    for pk in due_superseded(now):
        outcome = end_grace(pk, now=now)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def end_grace(superseded_id, now=None):
    """Retire one superseded secret whose grace is over. Returns what happened:
    "revoked", "busy" (another run holds it, or it is done or not due), or "retry"
    (the upstream delete failed for a passing reason; the next run tries again)."""
    now = now or timezone.now()
    lease = now + timedelta(seconds=claim_seconds())
    claimed = (
        SupersededSecret.objects.filter(pk=superseded_id, revoked_at__isnull=True, grace_until__lte=now)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lte=now))
        .update(claimed_until=lease)
    )
    if not claimed:
        return "busy"
    row = SupersededSecret.objects.select_related("key__organization", "key__project").get(pk=superseded_id)
    note = row.upstream_note
    if row.upstream_key_id and row.deleted_upstream_at is None:
        done, note = delete_upstream_once(row, lease)
        if done is None:
            mine = SupersededSecret.objects.filter(pk=row.pk, claimed_until=lease)
            mine.update(claimed_until=None, upstream_note=note)
            log.warning("superseded secret %s: upstream delete will be retried (%s)", row.pk, note)
            return "retry"
    with transaction.atomic():
        n = SupersededSecret.objects.filter(pk=row.pk, revoked_at__isnull=True, claimed_until=lease).update(
            revoked_at=now, secret_ciphertext=None, secret_key_version=None, claimed_until=None, upstream_note=note
        )
        if not n:
            return "busy"  # our claim expired and another run took over: it finishes
        row.refresh_from_db()
        deleted = row.deleted_upstream_at is not None
        reason = "grace period ended" + ("; deleted upstream" if deleted else (f"; {note}" if note else ""))
        record_event(row.key, KeyAction.SUPERSEDED_REVOKED, TASK_LABEL, at=now, old_hint=row.hint, reason=reason[:300])
        AuditEvent.record(
            TASK_LABEL,
            "key.superseded_revoked",
            row.key,
            **row.key.audit_details(),
            old_hint=row.hint,
            deleted_upstream=deleted,
            note=note,
        )
    return "revoked"


def delete_upstream_once(row, lease):
    """Delete a superseded secret's key upstream, at most once. Returns (done, note):
    done True when it is gone upstream, False when it cannot or may not be deleted
    (note says why; the row is revoked locally anyway), None when a passing failure
    means the next run should try again."""
    key = row.key
    project_id = key.project.openai_project_id if key.project_id else ""
    what, reason = upstream_keys.where_to_delete(key.kind, project_id, row.upstream_key_id)
    if what is None:
        return False, f"Not deleted upstream: {reason}"
    admin_key = upstream_keys.admin_key_for(key.organization)
    if admin_key is None:
        return False, "Not deleted upstream: the organization has no active admin key."
    if row.upstream_delete_sent_at is not None:
        # An earlier run sent the DELETE and did not record its answer (it crashed):
        # ask before deleting again.
        reply = upstream_keys.retrieve(admin_key, what, project_id)
        if reply.outcome == Outcome.NOT_FOUND:
            return mark_deleted(row, lease), ""
        if reply.outcome != Outcome.OK:
            return settle(reply)
    SupersededSecret.objects.filter(pk=row.pk, claimed_until=lease).update(upstream_delete_sent_at=timezone.now())
    reply = upstream_keys.delete(admin_key, what, project_id)
    reply.body = None
    if reply.outcome in (Outcome.OK, Outcome.NOT_FOUND):
        return mark_deleted(row, lease), ""
    return settle(reply)


def mark_deleted(row, lease):
    row.deleted_upstream_at = timezone.now()
    SupersededSecret.objects.filter(pk=row.pk).update(deleted_upstream_at=row.deleted_upstream_at)
    return True


def settle(reply):
    """A failed Admin API call: retry later if it may pass, else give up with a note."""
    note = f"Not deleted upstream: {outcome_label(reply.outcome)}"
    if reply.message:
        note += f" ({reply.message})"
    if reply.outcome in Outcome.transient() or reply.outcome in (Outcome.ERROR, Outcome.DESTINATION_REFUSED):
        return None, note[:300]
    return False, note[:300]


# --- revoke ---------------------------------------------------------------------------
@dataclass
class Revoked:
    key: ApiKey
    delete_asked: bool
    deleted_upstream: bool
    note: str


def can_delete_upstream(key, admin_key=None):
    """(True, "") when Revoke may offer to delete this key upstream, else (False, why not)."""
    project_id = key.project.openai_project_id if key.project_id else ""
    what, reason = upstream_keys.where_to_delete(key.kind, project_id, key.upstream_key_id)
    if what is None:
        return False, reason
    if (admin_key or upstream_keys.admin_key_for(key.organization)) is None:
        return False, "The organization has no active admin key."
    return True, ""


def revoke(key, actor, reason, delete_upstream=False, now=None):
    """Revoke `key` in the console at once (and upstream if asked and possible). Its
    superseded secrets' grace ends now. Raises RotationRefused if it is revoked already."""
    now = now or timezone.now()
    reason = (reason or "").strip()
    if not reason:
        raise RotationRefused("Say why the key is revoked.")
    # Chosen before the key is revoked: an admin key may delete itself upstream.
    admin_key = upstream_keys.admin_key_for(key.organization) if delete_upstream else None
    with transaction.atomic():
        n = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now, next_probe_at=None)
        if not n:
            raise RotationRefused("This key is revoked already.")
        key = ApiKey.objects.select_related("organization", "project").get(pk=key.pk)
        SupersededSecret.objects.filter(key=key, revoked_at__isnull=True, grace_until__gt=now).update(grace_until=now)
    deleted, note = False, ""
    if delete_upstream:
        deleted, note = delete_key_upstream(key, admin_key)
        if deleted:
            key.deleted_upstream_at = now
            ApiKey.objects.filter(pk=key.pk).update(deleted_upstream_at=now)
    record_event(key, KeyAction.REVOKED, actor, at=now, old_hint=key.hint, reason=reason[:300])
    AuditEvent.record(
        actor,
        "key.revoked",
        key,
        **key.audit_details(),
        reason=reason[:300],
        delete_upstream_asked=delete_upstream,
        deleted_upstream=deleted,
        note=note,
    )
    return Revoked(key, delete_upstream, deleted, note)


def delete_key_upstream(key, admin_key):
    """Delete a (revoked) key's current secret upstream with `admin_key`. Returns
    (deleted, note)."""
    ok, reason = can_delete_upstream(key, admin_key)
    if not ok:
        return False, f"Not deleted upstream: {reason}"
    project_id = key.project.openai_project_id if key.project_id else ""
    what, _ = upstream_keys.where_to_delete(key.kind, project_id, key.upstream_key_id)
    reply = upstream_keys.delete(admin_key, what, project_id)
    reply.body = None
    if reply.outcome in (Outcome.OK, Outcome.NOT_FOUND):
        return True, ""
    note = f"Not deleted upstream: {outcome_label(reply.outcome)}"
    if reply.message:
        note += f" ({reply.message})"
    return False, note[:300]
