"""Two-factor login with TOTP: enrolment, login with a code or a recovery code, the
requirement switch (CONSOLE_REQUIRE_2FA), and what is never stored or audited."""

import datetime
import json
import re

import pytest
import time_machine
from django.urls import reverse
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import two_factor
from accounts.models import AuditEvent, Organization

PASSWORD = "pw-alice-123456"  # tests/conftest.py


def code_for(device, offset=0):
    """The device's current TOTP code, as the phone app computes it."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time += offset * device.step
    return f"{totp.token():0{device.digits}d}"


@pytest.fixture
def enrolled(admin_user):
    """alice with a confirmed TOTP device and recovery codes; returns (device, codes)."""
    device = TOTPDevice.objects.create(user=admin_user, name="phone", confirmed=True)
    codes = two_factor.replace_recovery_codes(admin_user)
    return device, codes


def log_in(client, token=None, username="alice", password=PASSWORD):
    data = {"username": username, "password": password, "next": reverse("admin:index")}
    if token is not None:
        data["otp_token"] = token
    return client.post(reverse("admin:login"), data)


def is_logged_in(client):
    return client.get(reverse("admin:index")).status_code == 200


# --- Login ----------------------------------------------------------------------------


def test_a_user_without_a_device_logs_in_without_a_code(client, admin_user):
    assert log_in(client).status_code == 302
    assert is_logged_in(client)


def test_an_enrolled_user_cannot_log_in_without_a_code(client, enrolled):
    response = log_in(client)
    assert response.status_code == 200
    assert "enter the code from your app" in response.content.decode()
    assert not is_logged_in(client)
    (event,) = AuditEvent.objects.filter(action="auth.login_failed")
    assert event.details["reason"] == "second factor missing"


def test_an_enrolled_user_cannot_log_in_with_a_wrong_code(client, enrolled):
    device, _ = enrolled
    wrong = code_for(device, offset=10)
    response = log_in(client, wrong)
    assert response.status_code == 200
    assert "not right" in response.content.decode()
    assert not is_logged_in(client)
    (event,) = AuditEvent.objects.filter(action="auth.login_failed")
    assert event.details["reason"] == "second factor wrong"
    assert wrong not in json.dumps(event.details)


def test_an_enrolled_user_logs_in_with_a_valid_code(client, enrolled):
    device, _ = enrolled
    assert log_in(client, code_for(device)).status_code == 302
    assert is_logged_in(client)
    assert AuditEvent.objects.filter(action="auth.login").count() == 1


def test_a_totp_code_works_only_once(client, enrolled):
    device, _ = enrolled
    code = code_for(device)
    assert log_in(client, code).status_code == 302
    client.post(reverse("admin:logout"))
    assert log_in(client, code).status_code == 200


def test_a_recovery_code_works_once(client, enrolled):
    _, codes = enrolled
    assert log_in(client, codes[0].upper().replace("-", " ")).status_code == 302  # as typed from paper
    assert is_logged_in(client)
    client.post(reverse("admin:logout"))

    assert log_in(client, codes[0]).status_code == 200
    assert not is_logged_in(client)
    assert StaticToken.objects.count() == len(codes) - 1


def test_wrong_codes_count_towards_the_lockout(client, enrolled, settings):
    device, _ = enrolled
    for _ in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, "000000" if code_for(device) != "000000" else "111111")
    assert log_in(client, code_for(device)).status_code == 429
    assert not is_logged_in(client)


def test_a_session_without_its_code_is_treated_as_logged_out(client, enrolled, admin_user):
    client.force_login(admin_user)  # password only, as a session from before enrolment
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))
    assert "has not given a two-factor code" in client.get(response.url).content.decode()


# --- Enrolment ------------------------------------------------------------------------


def test_enrolment_shows_a_qr_code_and_the_secret_and_confirms_with_a_first_code(admin_client, admin_user, caplog):
    page = admin_client.get(reverse("admin:two_factor"))
    assert page.status_code == 200
    html = page.content.decode()
    device = TOTPDevice.objects.get(user=admin_user)
    assert not device.confirmed
    assert '<svg width="' in html and 'class="segno"' in html
    assert two_factor.base32_secret(device) in html
    # A reload shows the same device, not a new secret.
    assert two_factor.base32_secret(device) in admin_client.get(reverse("admin:two_factor")).content.decode()
    assert TOTPDevice.objects.filter(user=admin_user).count() == 1

    wrong = admin_client.post(reverse("admin:two_factor"), {"otp_token": code_for(device, offset=10)})
    assert "not right" in wrong.content.decode()
    device.refresh_from_db()
    assert not device.confirmed

    # django-otp throttles: the next try is allowed a second after a wrong one.
    with time_machine.travel(datetime.timedelta(seconds=2)):
        done = admin_client.post(reverse("admin:two_factor"), {"otp_token": code_for(device)})
    device.refresh_from_db()
    assert device.confirmed
    codes = re.findall(r"<li><code>([a-z2-7-]+)</code></li>", done.content.decode())
    assert len(codes) == 10 and len(set(codes)) == 10
    assert sorted(t.token for t in StaticToken.objects.all()) == sorted(c.replace("-", "") for c in codes)
    # Shown once: the page afterwards tells how many are left, not which.
    status = admin_client.get(reverse("admin:two_factor")).content.decode()
    assert "10 recovery codes left" in status
    assert not [c for c in codes if c in status]

    (event,) = AuditEvent.objects.filter(action="auth.2fa_enabled")
    assert (event.actor, event.target_id, event.details) == (admin_user, str(admin_user.pk), {"ip": "127.0.0.1"})
    stored = json.dumps(list(AuditEvent.objects.values()), default=str)
    for secret in [device.key, two_factor.base32_secret(device).replace(" ", ""), *codes]:
        assert secret not in stored
        assert secret not in caplog.text
    # The session that enrolled counts as verified.
    assert is_logged_in(admin_client)


def test_new_recovery_codes_replace_the_old_ones_after_the_password(client, enrolled, admin_user):
    device, old = enrolled
    log_in(client, code_for(device))

    refused = client.post(reverse("admin:two_factor_recovery_codes"), {"regenerate-password": "wrong"}, follow=True)
    assert "not your password" in refused.content.decode()
    assert sorted(t.token for t in StaticToken.objects.all()) == sorted(c.replace("-", "") for c in old)

    response = client.post(reverse("admin:two_factor_recovery_codes"), {"regenerate-password": PASSWORD})
    new = re.findall(r"<li><code>([a-z2-7-]+)</code></li>", response.content.decode())
    assert len(new) == 10 and not set(new) & set(old)
    assert sorted(t.token for t in StaticToken.objects.all()) == sorted(c.replace("-", "") for c in new)
    (event,) = AuditEvent.objects.filter(action="auth.recovery_codes_regenerated")
    assert event.details == {"ip": "127.0.0.1"}


def test_two_factor_is_turned_off_only_with_the_password(client, enrolled, admin_user):
    device, _ = enrolled
    log_in(client, code_for(device))

    client.post(reverse("admin:two_factor_disable"), {"disable-password": "wrong"})
    assert TOTPDevice.objects.filter(user=admin_user).exists()

    response = client.post(reverse("admin:two_factor_disable"), {"disable-password": PASSWORD})
    assert response.status_code == 302
    assert not TOTPDevice.objects.filter(user=admin_user).exists()
    assert not StaticDevice.objects.filter(user=admin_user).exists()
    assert AuditEvent.objects.filter(action="auth.2fa_disabled", actor=admin_user).count() == 1
    client.post(reverse("admin:logout"))
    assert log_in(client).status_code == 302  # no code needed any more


# --- Required for everyone ------------------------------------------------------------


@pytest.fixture
def required(settings):
    settings.CONSOLE_REQUIRE_2FA = True


def test_with_2fa_required_a_user_without_a_device_reaches_only_enrolment(admin_client, required, org, make_key):
    key, _ = make_key()
    enrolment = reverse("admin:two_factor")
    gets = [
        reverse("admin:index"),
        reverse("admin:app_list", args=["accounts"]),
        reverse("admin:accounts_organization_changelist"),
        reverse("admin:accounts_organization_change", args=[org.pk]),
        reverse("admin:keys_apikey_change", args=[key.pk]),
        reverse("admin:accounts_auditevent_changelist"),
        reverse("admin:password_change"),
    ]
    for url in gets:
        response = admin_client.get(url)
        assert (url, response.status_code, response.get("Location")) == (url, 302, enrolment)

    action = admin_client.post(
        reverse("admin:accounts_organization_changelist"),
        {"action": "delete_selected", "_selected_action": [org.pk], "post": "yes"},
    )
    assert (action.status_code, action["Location"]) == (302, enrolment)
    assert Organization.objects.filter(pk=org.pk).exists()

    change = admin_client.post(reverse("admin:accounts_organization_change", args=[org.pk]), {"name": "Changed"})
    assert (change.status_code, change["Location"]) == (302, enrolment)
    assert Organization.objects.get(pk=org.pk).name == "Acme"

    assert admin_client.get(enrolment).status_code == 200
    logout = admin_client.post(reverse("admin:logout"))
    assert (logout.status_code, logout["Location"]) == (302, reverse("admin:login"))


def test_with_2fa_required_enrolment_opens_the_admin(admin_client, admin_user, required):
    admin_client.get(reverse("admin:two_factor"))
    device = TOTPDevice.objects.get(user=admin_user)
    admin_client.post(reverse("admin:two_factor"), {"otp_token": code_for(device)})
    assert admin_client.get(reverse("admin:accounts_organization_changelist")).status_code == 200


def test_with_2fa_off_a_user_without_a_device_uses_the_admin(admin_client):
    assert admin_client.get(reverse("admin:accounts_organization_changelist")).status_code == 200


def test_the_device_admin_pages_never_show_a_totp_secret_or_a_recovery_code(client, enrolled, django_user_model):
    device, codes = enrolled
    root = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123456")
    client.force_login(root)
    static = StaticDevice.objects.get(user=device.user)
    pages = [
        reverse("admin:otp_totp_totpdevice_changelist"),
        reverse("admin:otp_totp_totpdevice_change", args=[device.pk]),
        reverse("admin:otp_static_staticdevice_changelist"),
        reverse("admin:otp_static_staticdevice_change", args=[static.pk]),
    ]
    for url in pages:
        html = client.get(url).content.decode()
        assert "phone" in html or "Recovery codes" in html, url
        assert device.key not in html
        assert two_factor.base32_secret(device).replace(" ", "") not in html.replace(" ", "")
        assert not [c for c in codes if c.replace("-", "") in html]
