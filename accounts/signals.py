"""Logins, logouts, failed logins, lockouts and refused requests into the audit log.

Actions (accounts.models.AuditEvent):

    auth.login          a user signed in through the login page (actor and target: the user)
    auth.logout         a user signed out (actor and target: the user)
    auth.login_failed   a wrong password, a missing or wrong second factor, or an attempt
                        refused because the username or address is locked out
    auth.locked_out     the failed attempt that started a lockout (django-axes)
    access.denied       a request answered 403 (console/denials.py): a reviewer's change,
                        add or delete, an action the user may not run, a CSRF refusal.
                        Details: the method, the path (never the query string or the
                        body), the admin view's name and object id when there is one.

An attempt's actor is "anonymous": nobody has proved who they are. Its details hold the
client address ("ip") and, for a refused attempt, why. When the submitted username belongs to a
user, the user is the target. When it belongs to nobody it is not stored anywhere — people
type passwords and API keys into the wrong box — only the fact that it was unknown.
Passwords and tokens are never stored.

Logins made in-process (the test client's force_login, a shell) come with no client
address; they are not attempts from anywhere and are not audited.

`lockout_username` is the identity django-axes counts failures under (AXES_USERNAME_CALLABLE):
the username when a user has it, else a keyed hash of it, so the per-username lockout
works for unknown names too without their text reaching axes' table or its log lines.
"""

from axes.helpers import get_client_ip_address, get_failure_limit
from axes.signals import user_locked_out
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.utils.crypto import salted_hmac

from console.denials import permission_denied
from console.leakguard import redact_key_shaped

from .models import AuditEvent

ANONYMOUS = "anonymous"
# Set in the credentials of a failure that django.contrib.auth did not report itself: the
# password was right but the second factor was missing or wrong (accounts/two_factor.py).
SECOND_FACTOR = "second_factor"


def is_from_a_client(request):
    return request is not None and bool(request.META.get("REMOTE_ADDR"))


def client_address(request):
    """The address axes counts the attempt under (honours CONSOLE_LOGIN_PROXY_COUNT)."""
    return getattr(request, "axes_ip_address", None) or get_client_ip_address(request)


def submitted_username(request, credentials):
    User = get_user_model()
    value = (credentials or {}).get(User.USERNAME_FIELD)
    if value is None and request is not None:
        value = request.POST.get(User.USERNAME_FIELD)
    return value or None


def user_named(username):
    """The user with this username, or None (also for an empty one)."""
    if not username:
        return None
    User = get_user_model()
    return User._default_manager.filter(**{User.USERNAME_FIELD: username}).first()


def lockout_username(request, credentials):
    """The name axes records a failure under: a user's username, "unknown:<keyed hash>"
    for a name no user has, None when none was submitted."""
    username = submitted_username(request, credentials)
    if username is None:
        return None
    if user_named(username) is not None:
        return username
    return "unknown:" + salted_hmac("accounts.signals.lockout_username", username).hexdigest()[:24]


def attempt_details(request, user):
    details = {"ip": client_address(request)}
    if user is None:
        details["unknown_username"] = True
    return details


def failures_counted(request):
    """Failures axes has counted for this attempt's username or address, this one
    included. Axes' own receivers run before ours: importing axes.signals above connects
    them before this module's."""
    return getattr(request, "axes_failures_since_start", 0) or 0


@receiver(user_logged_in, dispatch_uid="accounts.audit_login")
def record_login(sender, request, user, **kwargs):
    if is_from_a_client(request):
        AuditEvent.record(user, "auth.login", user, ip=client_address(request))


@receiver(user_logged_out, dispatch_uid="accounts.audit_logout")
def record_logout(sender, request, user, **kwargs):
    if user is not None and is_from_a_client(request):
        AuditEvent.record(user, "auth.logout", user, ip=client_address(request))


@receiver(user_login_failed, dispatch_uid="accounts.audit_login_failed")
def record_failed_login(sender, credentials, request=None, **kwargs):
    if not is_from_a_client(request):
        return
    user = user_named(submitted_username(request, credentials))
    details = attempt_details(request, user)
    if credentials.get(SECOND_FACTOR):
        details["reason"] = credentials[SECOND_FACTOR]
    elif failures_counted(request) > get_failure_limit(request, credentials):
        # Past the limit: the lock was there before this attempt, which was refused
        # without its password being checked.
        details["reason"] = "locked out"
    AuditEvent.record(ANONYMOUS, "auth.login_failed", user, **details)


@receiver(user_locked_out, dispatch_uid="accounts.audit_locked_out")
def record_lockout(sender, request, username, ip_address, **kwargs):
    """Axes signals a lockout on every failure from the limit on; only the one that
    reached the limit starts a lockout (the later ones are refused login_failed events)."""
    credentials = getattr(request, "axes_credentials", None)
    limit = get_failure_limit(request, credentials)
    if failures_counted(request) != limit:
        return
    user = user_named(submitted_username(request, credentials))
    AuditEvent.record(ANONYMOUS, "auth.locked_out", user, failures=limit, **attempt_details(request, user))


def denial_details(request):
    """What a refused request was: method, path, view and object id. Each is cut short
    and stripped of anything key-shaped (a path is whatever the client typed)."""
    details = {"method": request.method[:10], "path": redact_key_shaped(request.path)[:300]}
    match = getattr(request, "resolver_match", None)
    if match is not None:
        details["view"] = match.view_name[:100]
        object_id = match.kwargs.get("object_id")
        if object_id:
            details["object_id"] = redact_key_shaped(str(object_id))[:64]
    return details


@receiver(permission_denied, dispatch_uid="accounts.audit_permission_denied")
def record_permission_denied(sender, request, **kwargs):
    user = getattr(request, "user", None)
    actor = user if getattr(user, "is_authenticated", False) else ANONYMOUS
    AuditEvent.record(actor, "access.denied", None, **denial_details(request))
