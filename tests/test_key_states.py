"""Rotation states and stale flags (keys/states.py) at a frozen `now`: every state and flag,
the boundaries (exactly on the due date, the first due-soon day, expiry, unknown usage),
the key methods, and the SQL twins agreeing with the pure rules on a generated set."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Project
from keys import formats
from keys.models import ApiKey, Kind
from keys.states import Facts, FlagName, RotationState, days_overdue, next_rotation_due, rotation_state, stale_flags

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def facts(**fields):
    base = {"issued_at": NOW - 10 * DAY, "policy_days": 90, "last_used_at": NOW - DAY}
    return Facts(**{**base, **fields})


def names(flags):
    return [f.name for f in flags]


# --- states ------------------------------------------------------------------------------
def test_next_due_counts_from_the_last_rotation_else_the_issue_date():
    assert next_rotation_due(facts(issued_at=NOW - 100 * DAY)) == NOW - 10 * DAY
    assert next_rotation_due(facts(issued_at=NOW - 100 * DAY, rotated_at=NOW - 5 * DAY)) == NOW + 85 * DAY
    assert next_rotation_due(facts(policy_days=30)) == NOW + 20 * DAY


def test_compliant_until_the_first_due_soon_day():
    due_in_15 = facts(issued_at=NOW - 75 * DAY)
    assert rotation_state(due_in_15, NOW) == RotationState.COMPLIANT
    assert rotation_state(facts(issued_at=NOW - 76 * DAY + timedelta(seconds=1)), NOW) == RotationState.COMPLIANT


def test_due_soon_exactly_fourteen_days_before():
    assert rotation_state(facts(issued_at=NOW - 76 * DAY), NOW) == RotationState.DUE_SOON
    assert rotation_state(facts(issued_at=NOW - 89 * DAY), NOW) == RotationState.DUE_SOON


def test_overdue_exactly_on_the_due_date():
    key = facts(issued_at=NOW - 90 * DAY)
    assert rotation_state(key, NOW - timedelta(seconds=1)) == RotationState.DUE_SOON
    assert rotation_state(key, NOW) == RotationState.OVERDUE
    assert days_overdue(key, NOW) == 0
    assert days_overdue(key, NOW + 3 * DAY) == 3


def test_thirteen_months_under_a_ninety_day_policy_is_overdue():
    key = facts(issued_at=NOW - 396 * DAY)
    assert rotation_state(key, NOW) == RotationState.OVERDUE
    assert days_overdue(key, NOW) == 306
    flag = stale_flags(key, NOW)[0]
    assert flag.name == FlagName.OVERDUE
    assert flag.since == NOW - 306 * DAY
    assert "90-day policy" in flag.reason and "306 days overdue" in flag.reason


def test_expired_at_expires_at_and_before_overdue():
    key = facts(issued_at=NOW - 200 * DAY, expires_at=NOW)
    assert rotation_state(key, NOW - timedelta(seconds=1)) == RotationState.OVERDUE
    assert rotation_state(key, NOW) == RotationState.EXPIRED
    assert FlagName.OVERDUE not in names(stale_flags(key, NOW))


def test_revoked_wins_over_everything_and_only_from_its_moment():
    key = facts(issued_at=NOW - 200 * DAY, expires_at=NOW - DAY, revoked_at=NOW)
    assert rotation_state(key, NOW) == RotationState.REVOKED
    assert rotation_state(key, NOW - timedelta(seconds=1)) == RotationState.EXPIRED


# --- flags -------------------------------------------------------------------------------
def test_unused_after_the_setting_and_since_the_last_use(settings):
    settings.STALE_UNUSED_DAYS = 30
    assert FlagName.UNUSED not in names(stale_flags(facts(last_used_at=NOW - 30 * DAY + timedelta(seconds=1)), NOW))
    flags = stale_flags(facts(last_used_at=NOW - 30 * DAY), NOW)
    assert names(flags) == [FlagName.UNUSED]
    assert flags[0].since == NOW - 30 * DAY
    settings.STALE_UNUSED_DAYS = 31
    assert stale_flags(facts(last_used_at=NOW - 30 * DAY), NOW) == []


def test_no_usage_information_is_unknown_never_guessed():
    flags = stale_flags(facts(last_used_at=None, issued_at=NOW - 80 * DAY), NOW)
    assert names(flags) == [FlagName.USAGE_UNKNOWN]
    assert flags[0].since is None
    assert "No usage information" in flags[0].reason


def test_failing_after_n_failures_and_at_once_for_invalid_key(settings):
    settings.FAILING_PROBE_COUNT = 3
    assert stale_flags(facts(consecutive_failures=2, last_probe_outcome="timeout"), NOW) == []
    flags = stale_flags(facts(consecutive_failures=3, last_probe_outcome="timeout"), NOW)
    assert names(flags) == [FlagName.FAILING]
    assert "last 3 probes failed" in flags[0].reason and "Timeout" in flags[0].reason
    assert names(stale_flags(facts(consecutive_failures=1, last_probe_outcome="invalid_key"), NOW)) == ["failing"]


def test_revoked_and_deleted_upstream_keys_never_count_as_failing():
    bad = {"consecutive_failures": 9, "last_probe_outcome": "invalid_key"}
    assert FlagName.FAILING not in names(stale_flags(facts(revoked_at=NOW - DAY, **bad), NOW))
    assert FlagName.FAILING not in names(stale_flags(facts(deleted_upstream_at=NOW - DAY, **bad), NOW))
    # Deleted upstream only later: failing now.
    assert FlagName.FAILING in names(stale_flags(facts(deleted_upstream_at=NOW + DAY, **bad), NOW))


def test_orphaned_by_an_archived_project_or_an_owner_who_left():
    flags = stale_flags(facts(project_archived_at=NOW - 5 * DAY), NOW)
    assert names(flags) == [FlagName.ORPHANED] and flags[0].since == NOW - 5 * DAY
    assert "archived" in flags[0].reason
    flags = stale_flags(facts(owner_left_at=NOW - 2 * DAY), NOW)
    assert names(flags) == [FlagName.ORPHANED] and "owner" in flags[0].reason
    both = stale_flags(facts(owner_left_at=NOW - 2 * DAY, project_archived_at=NOW - 5 * DAY), NOW)
    assert len(both) == 1 and both[0].since == NOW - 5 * DAY
    assert stale_flags(facts(owner_left_at=NOW + DAY), NOW) == []


def test_leaked_since_the_scan_found_it():
    flags = stale_flags(facts(leaked_at=NOW - 3 * DAY), NOW)
    assert names(flags) == [FlagName.LEAKED] and flags[0].since == NOW - 3 * DAY
    assert stale_flags(facts(leaked_at=NOW + DAY), NOW) == []
    # A revoked key that leaked stays flagged: that is evidence.
    assert names(stale_flags(facts(leaked_at=NOW - 3 * DAY, revoked_at=NOW - DAY), NOW)) == [FlagName.LEAKED]


# --- the key's own methods ---------------------------------------------------------------
@pytest.mark.django_db
def test_key_methods_use_the_project_override_else_the_organization(make_key, project):
    key, _ = make_key(issued_at=NOW - 100 * DAY, last_used_at=NOW - DAY)
    key = ApiKey.objects.select_related("project__organization", "organization").get(pk=key.pk)
    assert key.next_rotation_due() == NOW - 10 * DAY
    assert key.rotation_state(NOW) == RotationState.OVERDUE
    project.rotation_policy_days = 120
    project.save()
    key = ApiKey.objects.select_related("project__organization", "organization").get(pk=key.pk)
    with CaptureQueriesContext(connection) as ctx:
        assert key.next_rotation_due() == NOW + 20 * DAY
        assert key.rotation_state(NOW) == RotationState.COMPLIANT
        assert key.stale_flags(NOW) == []
    assert len(ctx.captured_queries) == 0  # pure: what the caller loaded


# --- SQL and the pure rules agree ---------------------------------------------------------
def maybe(rng, value, p=0.5):
    return value if rng.random() < p else None


def around(rng, *offsets_days):
    """NOW plus one of the offsets (days), give or take exact boundaries."""
    return NOW + timedelta(days=rng.choice(offsets_days), seconds=rng.choice([0, 0, -1, 1]))


@pytest.fixture
def generated(org, project):
    rng = random.Random(9)
    archived = Project.objects.create(organization=org, name="Old", rotation_policy_days=30, archived_at=NOW - 20 * DAY)
    later_archived = Project.objects.create(organization=org, name="Later", archived_at=NOW + DAY)
    keys = []
    for i in range(160):
        where = rng.choice([project, archived, later_archived, None])
        issued = around(rng, -400, -120, -100, -90, -80, -76, -75, -60, -30, -20, -5)
        key = ApiKey(
            organization=org,
            project=where,
            kind=Kind.ADMIN if where is None else Kind.PROJECT,
            name=f"gen {i}",
            issued_at=issued,
            rotated_at=maybe(rng, around(rng, -95, -89, -77, -76, -10)),
            expires_at=maybe(rng, around(rng, -3, 0, 4), 0.25),
            revoked_at=maybe(rng, around(rng, -2, 0, 2), 0.2),
            last_used_at=maybe(rng, around(rng, -45, -30, -29, -1), 0.7),
            last_probe_outcome=rng.choice(["", "ok", "timeout", "invalid_key", "server_error"]),
            consecutive_failures=rng.choice([0, 1, 2, 3, 5]),
            deleted_upstream_at=maybe(rng, around(rng, -1, 1), 0.15),
            owner_left_at=maybe(rng, around(rng, -1, 1), 0.15),
            leaked_at=maybe(rng, around(rng, -1, 0, 1), 0.15),
        )
        key.set_secret(formats.generate(formats.ADMIN if where is None else formats.PROJECT))
        key.save()
        keys.append(key)
    return keys


@pytest.mark.django_db
def test_sql_filters_agree_with_the_pure_rules(generated):
    loaded = list(ApiKey.objects.select_related("project", "organization"))
    for state in RotationState:
        want = {k.pk for k in loaded if rotation_state(k, NOW) == state}
        got = set(ApiKey.objects.in_rotation_state(state, NOW).values_list("pk", flat=True))
        assert got == want, state
    seen = set()
    for flag in FlagName:
        want = {k.pk for k in loaded if flag in names(stale_flags(k, NOW))}
        got = set(ApiKey.objects.with_stale_flag(flag, NOW).values_list("pk", flat=True))
        assert got == want, flag
        if want:
            seen.add(flag)
    # The generated set exercises every state and flag (else this test proves little).
    assert {rotation_state(k, NOW) for k in loaded} == set(RotationState)
    assert seen == set(FlagName)


@pytest.mark.django_db
def test_counts_come_in_one_query_and_match_the_rules(generated):
    loaded = list(ApiKey.objects.select_related("project", "organization"))
    with CaptureQueriesContext(connection) as ctx:
        counts = ApiKey.objects.rotation_counts(NOW)
    assert len(ctx.captured_queries) == 1
    for state in RotationState:
        assert counts[state.value] == sum(1 for k in loaded if rotation_state(k, NOW) == state)
    for flag in FlagName:
        assert counts[f"flag:{flag.value}"] == sum(1 for k in loaded if flag in names(stale_flags(k, NOW)))


@pytest.mark.django_db
def test_sql_next_due_matches(generated):
    loaded = {k.pk: k for k in ApiKey.objects.select_related("project", "organization")}
    for pk, due in ApiKey.objects.with_rotation(NOW).values_list("pk", "next_due_at"):
        assert due == next_rotation_due(loaded[pk])


# --- the key admin -----------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize("who", ["admin_client", "reviewer_client"])
def test_the_key_list_filters_by_state_and_flag(request, who, make_key):
    client = request.getfixturevalue(who)
    today = datetime.now(UTC)
    old, _ = make_key(name="Old key", issued_at=today - 400 * DAY, last_used_at=today - DAY)
    fresh, _ = make_key(name="Fresh key", issued_at=today - DAY, last_used_at=today - DAY)
    leaked, _ = make_key(name="Leaked key", issued_at=today - DAY, leaked_at=today - DAY)
    url = "/admin/keys/apikey/"

    def listed(**params):
        response = client.get(url, params)
        assert response.status_code == 200
        return {k.pk for k in response.context["cl"].result_list}

    assert listed(rotation="overdue") == {old.pk}
    assert listed(rotation="compliant") == {fresh.pk, leaked.pk}
    assert listed(flag="leaked") == {leaked.pk}
    assert listed(flag="usage_unknown") == {leaked.pk}
    assert listed(flag="overdue", rotation="compliant") == set()
    html = client.get(url).content.decode()
    assert 'class="state failing">Overdue<' in html


@pytest.mark.django_db
def test_the_key_page_shows_state_next_due_and_flags_with_reasons(reviewer_client, make_key):
    today = datetime.now(UTC)
    key, secret = make_key(
        name="Stale key", issued_at=today - 400 * DAY, leaked_at=today - 2 * DAY, last_used_at=today - 60 * DAY
    )
    html = reviewer_client.get(f"/admin/keys/apikey/{key.pk}/change/").content.decode()
    assert "Overdue" in html
    assert f"{(today - 310 * DAY):%Y-%m-%d}" in html and "90-day policy" in html
    assert "The leak scan found this key" in html
    assert "No use in 30 days" in html
    assert secret not in html
