"""Two-factor login with TOTP (django-otp): the login form, enrolment and recovery codes.

Who must give a code at login: every user who has a confirmed TOTP device. Who must have
one: everybody when CONSOLE_REQUIRE_2FA is on — a signed-in user without one is sent to
the enrolment page and can open nothing else in the admin (console/admin_site.py).

Enrolment, on the "Two-factor authentication" page (admin:two_factor):

1. The page creates an unconfirmed TOTP device and shows its otpauth:// URL as a QR code
   (an inline SVG drawn here, server-side: the seed never leaves for a QR service) and
   its base32 secret for typing in by hand. Reloading shows the same device.
2. The user types the first code from the app. Only then is the device confirmed; the
   session counts as verified, and 10 recovery codes are created and shown on that one
   response — they are stored only as django-otp static tokens, and never shown again.
3. Later: new recovery codes (the old ones stop working) or turning two-factor off, each
   after the account password.

A code is a 6-digit TOTP code or a recovery code (each works once). The login form routes
it by shape to the one device it can belong to: trying it on every device would count a
failure against the others, and django-otp throttles a device after failures.

Audit: auth.2fa_enabled, auth.2fa_disabled, auth.recovery_codes_regenerated; a missing
or wrong code at login is auth.login_failed with a reason, and counts towards the
lockout like a wrong password. The TOTP seed and the recovery codes are never logged or
audited.
"""

import base64
import secrets

import segno
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.signals import user_login_failed
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.debug import sensitive_post_parameters
from django_otp import login as otp_login
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from .models import AuditEvent
from .signals import SECOND_FACTOR

RECOVERY_CODE_COUNT = 10
DEVICE_NAME = "Authenticator app"
RECOVERY_DEVICE_NAME = "Recovery codes"


# --- Who needs what -----------------------------------------------------------------------


def is_enrolled(user):
    """True when the user has a confirmed TOTP device (and so must give a code at login).
    Cached on the user object: the admin asks on every request."""
    if not getattr(user, "is_authenticated", False):
        return False
    if not hasattr(user, "_console_2fa_enrolled"):
        user._console_2fa_enrolled = TOTPDevice.objects.filter(user=user, confirmed=True).exists()
    return user._console_2fa_enrolled


def forget_enrolment(user):
    try:
        del user._console_2fa_enrolled
    except AttributeError:
        pass


def is_required():
    return settings.CONSOLE_REQUIRE_2FA


def needs_enrolment(user):
    """True when two-factor is required and this signed-in user has not set it up."""
    return is_required() and getattr(user, "is_authenticated", False) and not is_enrolled(user)


def is_second_factor_pending(user):
    """Signed in (force_login, or a session older than the device) but not verified by a
    code although the user has a device: the admin treats them as logged out."""
    verified = getattr(user, "is_verified", None)
    return is_enrolled(user) and not (verified and verified())


# --- Codes ---------------------------------------------------------------------------------


def normalize_code(value):
    return "".join((value or "").split()).replace("-", "").lower()


def new_recovery_code():
    """16 base32 characters (80 random bits); shown grouped as xxxx-xxxx-xxxx-xxxx."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


def grouped(code, size=4):
    return "-".join(code[i : i + size] for i in range(0, len(code), size))


def verify_code(user, code):
    """The device that accepted `code` (and will not accept it again), or None. Raises
    ValidationError while the device is throttled after wrong codes."""
    code = normalize_code(code)
    with transaction.atomic():
        if code.isdigit():
            devices = TOTPDevice.objects.filter(user=user, confirmed=True)
        else:
            devices = StaticDevice.objects.filter(user=user, confirmed=True)
        device = devices.select_for_update().first()
        if device is None:
            return None
        allowed, _ = device.verify_is_allowed()
        if not allowed:
            raise ValidationError("Too many wrong codes in a row: wait a minute, then try again.", code="throttled")
        return device if device.verify_token(code) else None


def replace_recovery_codes(user):
    """Delete the user's recovery codes and make RECOVERY_CODE_COUNT new ones; returns
    them, grouped for reading. The only moment they exist outside the token table."""
    StaticDevice.objects.filter(user=user).delete()
    device = StaticDevice.objects.create(user=user, name=RECOVERY_DEVICE_NAME, confirmed=True)
    codes = [new_recovery_code() for _ in range(RECOVERY_CODE_COUNT)]
    StaticToken.objects.bulk_create(StaticToken(device=device, token=code) for code in codes)
    return [grouped(code) for code in codes]


def qr_code_svg(url):
    """The otpauth:// URL as an inline SVG element (black on white, readable in dark mode)."""
    svg = segno.make(url, error="m").svg_inline(scale=4, border=4, dark="#000", light="#fff")
    return mark_safe(svg)  # segno's own markup; the URL is only encoded in the modules


def base32_secret(device):
    secret = base64.b32encode(device.bin_key).decode().rstrip("=")
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


# --- Login form ----------------------------------------------------------------------------


class LoginForm(AdminAuthenticationForm):
    """The admin login form with an optional two-factor code. Users with a confirmed
    device must give one; everybody else may leave it blank."""

    otp_token = forms.CharField(
        label="Two-factor code",
        required=False,
        max_length=40,
        strip=True,
        help_text="From your authenticator app, or a recovery code. Leave blank if you have not set up two-factor.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "spellcheck": "false"}),
    )

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "token_required": "This account uses two-factor authentication: enter the code from your app.",
        "invalid_token": "That two-factor code is not right (or was already used).",
    }

    def clean(self):
        cleaned = super().clean()
        user = self.get_user()
        if user is None or not is_enrolled(user):
            return cleaned
        token = cleaned.get("otp_token")
        if not token:
            self.fail_second_factor("missing", "token_required")
        try:
            device = verify_code(user, token)
        except ValidationError:
            self.fail_second_factor("throttled", None)
            raise
        if device is None:
            self.fail_second_factor("wrong", "invalid_token")
        # django_otp's user_logged_in receiver stores this device in the session.
        user.otp_device = device
        return cleaned

    def fail_second_factor(self, reason, message_code):
        """Report the failure like a wrong password (audit and lockout count it), forget
        the user, and raise the form error."""
        username = self.cleaned_data.get("username")
        self.user_cache = None
        user_login_failed.send(
            sender=__name__,
            credentials={"username": username, SECOND_FACTOR: f"second factor {reason}"},
            request=self.request,
        )
        if message_code:
            raise ValidationError(self.error_messages[message_code], code=message_code)


# --- Pages ---------------------------------------------------------------------------------


class ConfirmDeviceForm(forms.Form):
    otp_token = forms.CharField(
        label="Code from the app",
        max_length=10,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )


class PasswordForm(forms.Form):
    password = forms.CharField(label="Your password", strip=False, widget=forms.PasswordInput)

    def __init__(self, user, *args, **kwargs):
        self.user = user
        super().__init__(*args, **kwargs)

    def clean_password(self):
        password = self.cleaned_data["password"]
        if not self.user.check_password(password):
            raise ValidationError("That is not your password.", code="password_incorrect")
        return password


def pending_device(user):
    """The user's unconfirmed TOTP device, created on first visit; the same one on reloads."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("pk").first()
    return device or TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)


def render(request, admin_site, template, **context):
    return TemplateResponse(
        request,
        template,
        {**admin_site.each_context(request), "title": "Two-factor authentication", **context},
    )


@sensitive_post_parameters()
def two_factor_view(request, admin_site):
    """GET: the status page, or enrolment for a user without a device. POST: confirm the
    pending device with its first code."""
    user = request.user
    if is_enrolled(user):
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        return render(
            request,
            admin_site,
            "accounts/two_factor_status.html",
            recovery_codes_left=StaticToken.objects.filter(device__user=user).count(),
            regenerate_form=PasswordForm(user, prefix="regenerate"),
            disable_form=PasswordForm(user, prefix="disable"),
            is_required=is_required(),
        )

    device = pending_device(user)
    form = ConfirmDeviceForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            device = TOTPDevice.objects.select_for_update().get(pk=device.pk)
            allowed, _ = device.verify_is_allowed()  # django-otp slows guessing after wrong codes
            if allowed and device.verify_token(normalize_code(form.cleaned_data["otp_token"])):
                device.confirmed = True
                device.save(update_fields=["confirmed"])
                codes = replace_recovery_codes(user)
                AuditEvent.record(user, "auth.2fa_enabled", user)
                forget_enrolment(user)
            else:
                codes = None
        if codes is not None:
            otp_login(request, device)  # this session has just proved the device
            return render(request, admin_site, "accounts/two_factor_codes.html", codes=codes, enrolled=True)
        form.add_error(
            "otp_token",
            "That code is not right. Check the clock of your phone and try the next one."
            if allowed
            else "Too many wrong codes in a row: wait a few seconds, then try the next code.",
        )
    return render(
        request,
        admin_site,
        "accounts/two_factor_enrol.html",
        form=form,
        qr_code=qr_code_svg(device.config_url),
        secret=base32_secret(device),
        is_required=is_required(),
    )


@sensitive_post_parameters()
def regenerate_recovery_codes_view(request, admin_site):
    """POST with the password: new recovery codes, shown once; the old ones stop working."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    user = request.user
    if not is_enrolled(user):
        return HttpResponseRedirect(reverse("admin:two_factor", current_app=admin_site.name))
    form = PasswordForm(user, request.POST, prefix="regenerate")
    if not form.is_valid():
        messages.error(request, "Recovery codes unchanged: " + " ".join(form.errors["password"]))
        return HttpResponseRedirect(reverse("admin:two_factor", current_app=admin_site.name))
    with transaction.atomic():
        codes = replace_recovery_codes(user)
        AuditEvent.record(user, "auth.recovery_codes_regenerated", user)
    return render(request, admin_site, "accounts/two_factor_codes.html", codes=codes, enrolled=False)


@sensitive_post_parameters()
def disable_view(request, admin_site):
    """POST with the password: delete the TOTP device and the recovery codes."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    user = request.user
    form = PasswordForm(user, request.POST, prefix="disable")
    if not form.is_valid():
        messages.error(request, "Two-factor authentication is still on: " + " ".join(form.errors["password"]))
        return HttpResponseRedirect(reverse("admin:two_factor", current_app=admin_site.name))
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user).delete()
        StaticDevice.objects.filter(user=user).delete()
        AuditEvent.record(user, "auth.2fa_disabled", user)
    forget_enrolment(user)
    messages.success(request, "Two-factor authentication is off for your account.")
    return HttpResponseRedirect(reverse("admin:two_factor", current_app=admin_site.name))
