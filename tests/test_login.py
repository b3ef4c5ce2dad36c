"""Logging in: lockout after repeated failures (per username and per address), the audit
of logins, logouts, failures and lockouts, session expiry, and the security headers of
the admin pages."""

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import time_machine
from axes.models import AccessAttempt, AccessLog
from django.contrib.sessions.models import Session
from django.urls import reverse

from accounts.models import AuditEvent
from keys import formats

PASSWORD = "pw-alice-123456"  # tests/conftest.py
WRONG = "Not-the-password-7731"


@pytest.fixture
def limit(settings):
    return settings.AXES_FAILURE_LIMIT


def log_in(client, username, password, address="127.0.0.1", **fields):
    data = {"username": username, "password": password, "next": reverse("admin:index"), **fields}
    return client.post(reverse("admin:login"), data, REMOTE_ADDR=address)


def logged_in_sessions():
    return [s for s in Session.objects.all() if "_auth_user_id" in s.get_decoded()]


def events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


# --- Lockout --------------------------------------------------------------------------


def test_it_locks_a_username_out_after_the_failure_limit_even_with_the_right_password(client, admin_user, limit):
    statuses = [log_in(client, "alice", WRONG).status_code for _ in range(limit)]
    assert statuses == [200] * (limit - 1) + [429]  # the form with its error; locked at the limit

    response = log_in(client, "alice", PASSWORD)

    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert 'id="login-form"' in response.content.decode()  # the login page, not a bare text
    assert logged_in_sessions() == []
    assert client.get(reverse("admin:index")).status_code == 302


def test_a_login_below_the_limit_succeeds(client, admin_user, limit):
    for _ in range(limit - 1):
        log_in(client, "alice", WRONG)
    assert log_in(client, "alice", PASSWORD).status_code == 302


def test_a_successful_login_does_not_clear_the_failures_of_its_address(client, admin_user, reviewer, limit):
    for n in range(limit - 1):
        log_in(client, f"guess{n}", WRONG, address="127.0.6.1")
    # An insider logs in from the same address between guesses...
    assert log_in(client, "rita", "pw-rita-123456", address="127.0.6.1").status_code == 302
    client.logout()
    # ...and the next guess still reaches the limit.
    assert log_in(client, "guess-last", WRONG, address="127.0.6.1").status_code == 429
    assert log_in(client, "alice", PASSWORD, address="127.0.6.1").status_code == 429


def test_a_username_attacked_from_many_addresses_is_locked_everywhere(client, admin_user, reviewer, limit):
    for n in range(limit):
        log_in(client, "alice", WRONG, address=f"127.0.1.{n + 1}")

    assert log_in(client, "alice", PASSWORD, address="127.0.2.1").status_code == 429
    # The address itself is not locked: another user logs in from it.
    assert log_in(client, "rita", "pw-rita-123456", address="127.0.2.1").status_code == 302


def test_one_address_trying_many_usernames_is_locked_for_every_username(client, admin_user, limit):
    for n in range(limit):
        log_in(client, f"guess{n}", WRONG, address="127.0.3.1")

    assert log_in(client, "alice", PASSWORD, address="127.0.3.1").status_code == 429
    assert logged_in_sessions() == []
    # alice herself had no failure: from another address she gets in.
    assert log_in(client, "alice", PASSWORD, address="127.0.3.2").status_code == 302


def test_the_lockout_ends_after_the_cool_off_time(client, admin_user, limit, settings):
    start = datetime.datetime(2026, 3, 1, 9, 0, tzinfo=datetime.UTC)
    cool_off = datetime.timedelta(hours=settings.AXES_COOLOFF_TIME)
    with time_machine.travel(start, tick=False) as clock:
        for _ in range(limit):
            log_in(client, "alice", WRONG)
        clock.move_to(start + cool_off - datetime.timedelta(minutes=1))
        assert log_in(client, "alice", PASSWORD).status_code == 429
        # That refused attempt counted too: the cool-off runs from the last failure.
        clock.move_to(start + 2 * cool_off)
        assert log_in(client, "alice", PASSWORD).status_code == 302


def test_lockout_settings_come_from_the_environment():
    env = {
        **os.environ,
        "CONSOLE_LOGIN_FAILURE_LIMIT": "7",
        "CONSOLE_LOGIN_COOLOFF_MINUTES": "30",
        "CONSOLE_SESSION_IDLE_MINUTES": "60",
        "CONSOLE_REQUIRE_2FA": "true",
        "SESSION_EXPIRE_AT_BROWSER_CLOSE": "false",
        "DJANGO_SETTINGS_MODULE": "console.settings",
        "CONSOLE_ENV_FILE": os.devnull,
    }
    code = (
        "from django.conf import settings as s; "
        "print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME * 60, s.SESSION_COOKIE_AGE, "
        "s.CONSOLE_REQUIRE_2FA, s.SESSION_EXPIRE_AT_BROWSER_CLOSE)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["7", "30.0", "3600", "True", "False"]


# --- Audit -----------------------------------------------------------------------------


def test_a_successful_login_and_a_logout_are_audited(client, admin_user):
    assert log_in(client, "alice", PASSWORD, address="127.0.0.5").status_code == 302
    response = client.post(reverse("admin:logout"), REMOTE_ADDR="127.0.0.5")
    assert response.status_code == 302
    assert response.url == reverse("admin:login")  # LOGOUT_REDIRECT_URL

    (login,) = events("auth.login")
    assert (login.actor, login.actor_label, login.target_id) == (admin_user, "alice", str(admin_user.pk))
    assert login.details == {"ip": "127.0.0.5"}
    (logout,) = events("auth.logout")
    assert (logout.actor, logout.target_id, logout.details) == (
        admin_user,
        str(admin_user.pk),
        {"ip": "127.0.0.5"},
    )


def test_a_failed_login_of_a_user_is_audited_without_the_password(client, admin_user, caplog):
    log_in(client, "alice", WRONG, address="127.0.0.6")

    (event,) = events("auth.login_failed")
    assert event.actor is None and event.actor_label == "anonymous"
    assert (event.target_type, event.target_id) == ("user", str(admin_user.pk))
    assert event.details == {"ip": "127.0.0.6"}
    stored = json.dumps(list(AuditEvent.objects.values()) + list(AccessAttempt.objects.values()), default=str)
    assert WRONG not in stored
    assert WRONG not in caplog.text


def test_a_failed_login_with_a_key_shaped_username_stores_no_part_of_it(client, db, caplog):
    secret = formats.generate(formats.PROJECT)

    log_in(client, secret, WRONG, address="127.0.0.7")

    (event,) = events("auth.login_failed")
    assert (event.target_type, event.target_id, event.target_repr) == ("", "", "")
    assert event.details == {"ip": "127.0.0.7", "unknown_username": True}
    stored = json.dumps(
        [
            list(AuditEvent.objects.values()),
            list(AccessAttempt.objects.values()),
            list(AccessLog.objects.values()),
            [s.get_decoded() for s in Session.objects.all()],
        ],
        default=str,
    )
    body = secret.removeprefix("sk-proj-")
    pieces = {body[i : i + 8] for i in range(0, len(body) - 8)}
    assert not [p for p in pieces if p in stored]
    assert not [p for p in pieces if p in caplog.text]
    assert WRONG not in stored


def test_an_unknown_username_is_still_locked_out_without_being_stored(client, db, limit):
    secret = formats.generate(formats.PROJECT)
    for n in range(limit):
        log_in(client, secret, WRONG, address=f"127.0.4.{n + 1}")
    # Per username: a new address does not help.
    assert log_in(client, secret, WRONG, address="127.0.5.1").status_code == 429
    assert all(a.username.startswith("unknown:") for a in AccessAttempt.objects.all())


def test_a_lockout_is_audited_once_and_refused_attempts_say_why(client, admin_user, limit):
    for _ in range(limit):
        log_in(client, "alice", WRONG, address="127.0.0.8")
    log_in(client, "alice", PASSWORD, address="127.0.0.8")

    (lockout,) = events("auth.locked_out")
    assert lockout.target_id == str(admin_user.pk)
    assert lockout.details == {"ip": "127.0.0.8", "failures": limit}
    failed = events("auth.login_failed")
    assert len(failed) == limit + 1
    assert [e.details.get("reason") for e in failed] == [None] * limit + ["locked out"]
    assert events("auth.login") == []


def test_force_login_in_tests_is_not_an_audited_login(admin_client):
    assert admin_client.get(reverse("admin:index")).status_code == 200
    assert AuditEvent.objects.filter(action__startswith="auth.").count() == 0


# --- Sessions and headers -------------------------------------------------------------


def test_a_session_ends_after_the_idle_time_and_each_request_extends_it(client, admin_user, settings):
    idle = datetime.timedelta(minutes=settings.CONSOLE_SESSION_IDLE_MINUTES)
    assert settings.SESSION_COOKIE_AGE == idle.total_seconds()
    index = reverse("admin:index")
    start = datetime.datetime(2026, 3, 2, 9, 0, tzinfo=datetime.UTC)
    with time_machine.travel(start, tick=False) as clock:
        assert log_in(client, "alice", PASSWORD).status_code == 302
        for step in (1, 2, 3):  # three idle periods in all, never idle for a whole one
            clock.move_to(start + step * (idle - datetime.timedelta(minutes=1)))
            assert client.get(index).status_code == 200
        clock.move_to(start + 3 * (idle - datetime.timedelta(minutes=1)) + idle + datetime.timedelta(minutes=1))
        response = client.get(index)
    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_the_session_cookie_ends_with_the_browser_in_production(client, admin_user, settings):
    assert settings.DEBUG is False
    response = log_in(client, "alice", PASSWORD)
    cookie = response.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["max-age"] == "" and cookie["expires"] == ""


@pytest.mark.parametrize("who", ["anonymous", "admin"])
def test_admin_pages_carry_a_strict_content_security_policy(client, admin_user, who):
    if who == "admin":
        client.force_login(admin_user)
    for url in [reverse("admin:login"), reverse("admin:index"), reverse("admin:accounts_organization_changelist")]:
        header = client.get(url)["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in header.split(";") if d.strip())
        assert directives["default-src"] == "'self'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert directives["form-action"] == "'self'"
        assert directives["base-uri"] == "'none'"
        assert directives["object-src"] == "'none'"
        assert "unsafe" not in header
