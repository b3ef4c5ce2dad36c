"""Rotation states and stale-key flags: pure rules over a key's stored fields and `now`.

Nothing here queries. The functions take a key (an ApiKey whose project and organization
the caller loaded with it, or one annotated with `policy_days`) or a `Facts` the caller
built (the rotation report builds one per row, from history, for `--as-of`), and `now`.
A date in the future of `now` does not count yet: a key revoked, leaked or archived after
`now` is not revoked, leaked or orphaned at `now`, which is what lets the report
recompute a past date from the same rules.

State, first match wins:
    revoked    revoked_at ≤ now
    expired    expires_at ≤ now
    overdue    next due ≤ now (exactly on the due date counts as overdue)
    due soon   next due − ROTATION_DUE_SOON_DAYS ≤ now
    compliant  otherwise
where next due = (rotated_at or issued_at) + the policy (the project's override, else the
organization's days).

Flags, each with its reason and since when:
    overdue        the state is overdue (since the due date)
    unused         no use in STALE_UNUSED_DAYS (since its last use); not for revoked keys
    usage_unknown  no usage information at all (never guessed as used or unused)
    failing        FAILING_PROBE_COUNT failed probes in a row, or an invalid_key outcome
                   at once; never for revoked keys or keys deleted upstream
    orphaned       the project is archived, or the owner left it upstream
    leaked         the leak scan found the secret

`expressions(sources, now)` is the same rules in SQL, for the key list's filters, the
dashboard's counts and the report's filters; tests/test_key_states.py checks both sides
agree on a generated set of keys.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from django.conf import settings
from django.db import models
from django.db.models import Case, DateTimeField, DurationField, ExpressionWrapper, F, Func, Value, When
from django.db.models.functions import Coalesce
from django.db.models.lookups import Exact, GreaterThanOrEqual, LessThanOrEqual

from console.upstream import Outcome


class RotationState(models.TextChoices):
    COMPLIANT = "compliant", "Compliant"
    DUE_SOON = "due_soon", "Due soon"
    OVERDUE = "overdue", "Overdue"
    EXPIRED = "expired", "Expired"
    REVOKED = "revoked", "Revoked"


class FlagName(models.TextChoices):
    OVERDUE = "overdue", "Rotation overdue"
    UNUSED = "unused", "Unused"
    USAGE_UNKNOWN = "usage_unknown", "Usage unknown"
    FAILING = "failing", "Failing"
    ORPHANED = "orphaned", "Orphaned"
    LEAKED = "leaked", "Leaked"


class Flag(NamedTuple):
    name: str
    reason: str
    since: datetime | None


@dataclass(frozen=True)
class Facts:
    """What the rules read about one key, as of some moment."""

    issued_at: datetime
    policy_days: int
    rotated_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    last_probe_outcome: str = ""
    last_success_at: datetime | None = None
    consecutive_failures: int = 0
    deleted_upstream_at: datetime | None = None
    project_archived_at: datetime | None = None
    owner_left_at: datetime | None = None
    leaked_at: datetime | None = None


def due_soon_days():
    return settings.ROTATION_DUE_SOON_DAYS


def unused_days():
    return settings.STALE_UNUSED_DAYS


def failing_count():
    return settings.FAILING_PROBE_COUNT


def facts_of(key):
    """A key's Facts from what is loaded on it: an ApiKey (with its project and
    organization loaded, or a `policy_days` annotation) or Facts already."""
    if isinstance(key, Facts):
        return key
    policy = getattr(key, "policy_days", None)
    if policy is None:
        # The project's override, else the organization's policy: the key's organization
        # is its project's (ApiKey.clean), so key.organization is what the caller loaded.
        override = key.project.rotation_policy_days if key.project_id else None
        policy = override or key.organization.rotation_policy_days
    if hasattr(key, "project_archived_at"):
        archived = key.project_archived_at
    else:
        archived = key.project.archived_at if key.project_id else None
    return Facts(
        issued_at=key.issued_at,
        policy_days=policy,
        rotated_at=key.rotated_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        last_used_at=key.last_used_at,
        last_probe_outcome=key.last_probe_outcome,
        last_success_at=key.last_success_at,
        consecutive_failures=key.consecutive_failures,
        deleted_upstream_at=key.deleted_upstream_at,
        project_archived_at=archived,
        owner_left_at=key.owner_left_at,
        leaked_at=key.leaked_at,
    )


def happened(at, now):
    return at is not None and at <= now


def next_rotation_due(key):
    """When the key's rotation falls due: (last rotation, else issue) + policy days."""
    f = facts_of(key)
    return (f.rotated_at or f.issued_at) + timedelta(days=f.policy_days)


def _state(f, due, now):
    if happened(f.revoked_at, now):
        return RotationState.REVOKED
    if happened(f.expires_at, now):
        return RotationState.EXPIRED
    if due <= now:
        return RotationState.OVERDUE
    if due - timedelta(days=due_soon_days()) <= now:
        return RotationState.DUE_SOON
    return RotationState.COMPLIANT


def rotation_state(key, now):
    f = facts_of(key)
    return _state(f, next_rotation_due(f), now)


def days_overdue(key, now):
    """Whole days past the due date for an overdue key, else 0."""
    f = facts_of(key)
    due = next_rotation_due(f)
    return (now - due).days if _state(f, due, now) == RotationState.OVERDUE else 0


def stale_flags(key, now):
    """[Flag(name, reason, since)] in FlagName order; empty for a healthy key."""
    return evaluate(key, now).flags


class Evaluation(NamedTuple):
    state: RotationState
    next_due: datetime
    days_overdue: int
    flags: list


OUTCOME_LABELS = dict(Outcome.choices)

# Each flag's reason, a str.format() template over values already written as text: the
# rules below fill them in Python, and the rotation report's CSV (keys/report_csv.py) in
# SQL, so both say the same words.
REASONS = {
    "overdue": "Rotation was due {due} under a {policy_days}-day policy ({days_overdue} days overdue).",
    "usage_unknown": "No usage information: no usage ingested for this key and no last use reported upstream.",
    "unused": "No use in {days} days; last used {last_used}.",
    "invalid_key": "The last probe said the key is invalid.",
    "failing": "The last {count} probes failed (latest: {outcome}).",
    "leaked": "The leak scan found this key's secret.",
}
DAY = "%Y-%m-%d"
NO_OUTCOME = "—"


def orphan_reason(archived, owner_left):
    """The orphaned flag's reason for an archived project, an owner gone, or both."""
    parts = []
    if archived:
        parts.append("the project is archived")
    if owner_left:
        parts.append("the owner no longer has access to the project upstream")
    reason = " and ".join(parts)
    return reason[0].upper() + reason[1:] + "."


def evaluate(key, now):
    """State, next due date, days overdue and flags at once (the report's per-row call)."""
    f = facts_of(key)
    due = next_rotation_due(f)
    state = _state(f, due, now)
    flags = []
    revoked = state == RotationState.REVOKED
    if state == RotationState.OVERDUE:
        reason = REASONS["overdue"].format(due=f"{due:{DAY}}", policy_days=f.policy_days, days_overdue=(now - due).days)
        flags.append(Flag(FlagName.OVERDUE, reason, due))
    if not revoked:
        if f.last_used_at is None or f.last_used_at > now:
            flags.append(Flag(FlagName.USAGE_UNKNOWN, REASONS["usage_unknown"], None))
        elif f.last_used_at <= now - timedelta(days=unused_days()):
            reason = REASONS["unused"].format(days=unused_days(), last_used=f"{f.last_used_at:{DAY}}")
            flags.append(Flag(FlagName.UNUSED, reason, f.last_used_at))
    if not revoked and not happened(f.deleted_upstream_at, now):
        if f.last_probe_outcome == Outcome.INVALID_KEY:
            flags.append(Flag(FlagName.FAILING, REASONS["invalid_key"], None))
        elif f.consecutive_failures >= failing_count():
            outcome = OUTCOME_LABELS.get(f.last_probe_outcome, NO_OUTCOME)
            reason = REASONS["failing"].format(count=f.consecutive_failures, outcome=outcome)
            flags.append(Flag(FlagName.FAILING, reason, None))
    archived, owner_left = happened(f.project_archived_at, now), happened(f.owner_left_at, now)
    if archived or owner_left:
        since = min(at for at, applies in [(f.project_archived_at, archived), (f.owner_left_at, owner_left)] if applies)
        flags.append(Flag(FlagName.ORPHANED, orphan_reason(archived, owner_left), since))
    if happened(f.leaked_at, now):
        flags.append(Flag(FlagName.LEAKED, REASONS["leaked"], f.leaked_at))
    overdue_days = (now - due).days if state == RotationState.OVERDUE else 0
    return Evaluation(state, due, overdue_days, flags)


# --- the same rules in SQL ---------------------------------------------------------------
@dataclass(frozen=True)
class Sources:
    """The SQL expression for each fact of a key. `LIVE` reads the key's own columns; the
    rotation report's --as-of swaps some for subqueries over the key's history."""

    issued_at: object = F("issued_at")
    policy_days: object = Coalesce(F("project__rotation_policy_days"), F("organization__rotation_policy_days"))
    rotated_at: object = F("rotated_at")
    expires_at: object = F("expires_at")
    revoked_at: object = F("revoked_at")
    last_used_at: object = F("last_used_at")
    last_probe_outcome: object = F("last_probe_outcome")
    consecutive_failures: object = F("consecutive_failures")
    deleted_upstream_at: object = F("deleted_upstream_at")
    project_archived_at: object = F("project__archived_at")
    owner_left_at: object = F("owner_left_at")
    leaked_at: object = F("leaked_at")


LIVE = Sources()
ONE_DAY = Value(timedelta(days=1), output_field=DurationField())
MICROSECONDS_A_DAY = 86_400_000_000


class Days(Func):
    """A whole number of days as a duration. PostgreSQL multiplies an interval; SQLite
    (the embedded default), where Django keeps durations as microseconds and cannot
    multiply one, gets the microseconds."""

    output_field = DurationField()

    def as_sql(self, compiler, connection, **extra_context):
        (days,) = self.get_source_expressions()
        return compiler.compile(ExpressionWrapper(days * ONE_DAY, output_field=DurationField()))

    def as_sqlite(self, compiler, connection, **extra_context):
        (days,) = self.get_source_expressions()
        microseconds = ExpressionWrapper(days * Value(MICROSECONDS_A_DAY), output_field=models.BigIntegerField())
        return compiler.compile(microseconds)


def due_expression(src):
    return ExpressionWrapper(
        Coalesce(src.rotated_at, src.issued_at) + Days(src.policy_days), output_field=DateTimeField()
    )


def _at(when):
    return Value(when, output_field=DateTimeField())


def _flag(*whens, default=Value(False)):
    return Case(*whens, default=default, output_field=models.BooleanField())


def expressions(src, now):
    """{annotation name: expression}: next_due_at, key_state and flag_<name> for each
    flag, the SQL twins of the functions above."""
    due = due_expression(src)
    revoked = LessThanOrEqual(src.revoked_at, _at(now))
    state = Case(
        When(revoked, then=Value(RotationState.REVOKED.value)),
        When(LessThanOrEqual(src.expires_at, _at(now)), then=Value(RotationState.EXPIRED.value)),
        When(LessThanOrEqual(due, _at(now)), then=Value(RotationState.OVERDUE.value)),
        When(
            LessThanOrEqual(due, _at(now + timedelta(days=due_soon_days()))),
            then=Value(RotationState.DUE_SOON.value),
        ),
        default=Value(RotationState.COMPLIANT.value),
        output_field=models.CharField(),
    )
    return {
        "next_due_at": due,
        "key_state": state,
        f"flag_{FlagName.OVERDUE}": _flag(
            When(revoked, then=Value(False)),
            When(LessThanOrEqual(src.expires_at, _at(now)), then=Value(False)),
            When(LessThanOrEqual(due, _at(now)), then=Value(True)),
        ),
        f"flag_{FlagName.USAGE_UNKNOWN}": _flag(
            When(revoked, then=Value(False)),
            When(LessThanOrEqual(src.last_used_at, _at(now)), then=Value(False)),
            default=Value(True),
        ),
        f"flag_{FlagName.UNUSED}": _flag(
            When(revoked, then=Value(False)),
            When(LessThanOrEqual(src.last_used_at, _at(now - timedelta(days=unused_days()))), then=Value(True)),
        ),
        f"flag_{FlagName.FAILING}": _flag(
            When(revoked, then=Value(False)),
            When(LessThanOrEqual(src.deleted_upstream_at, _at(now)), then=Value(False)),
            When(Exact(src.last_probe_outcome, Value(Outcome.INVALID_KEY.value)), then=Value(True)),
            When(GreaterThanOrEqual(src.consecutive_failures, Value(failing_count())), then=Value(True)),
        ),
        f"flag_{FlagName.ORPHANED}": _flag(
            When(LessThanOrEqual(src.project_archived_at, _at(now)), then=Value(True)),
            When(LessThanOrEqual(src.owner_left_at, _at(now)), then=Value(True)),
        ),
        f"flag_{FlagName.LEAKED}": _flag(When(LessThanOrEqual(src.leaked_at, _at(now)), then=Value(True))),
    }


def flag_field(name):
    return f"flag_{FlagName(name).value}"
