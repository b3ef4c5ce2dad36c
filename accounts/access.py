"""The "Access" page (admin:access): who may use the console, with which role.

Every user with the role the console gives them — superuser, console admin, security
reviewer or none —, whether they can sign in (active and staff), their last login and
whether they enrolled two-factor. Console admins, security reviewers and superusers may
view it (the same right as the audit log); nothing can be changed there. Each view is an
"access.viewed" event. Who changed someone's access is in the audit log
(accounts/access_admin.py, accounts/access_changes.py).
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, Prefetch
from django.http import HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django_otp.plugins.otp_totp.models import TOTPDevice

from .models import AuditEvent

ADMINS = "Console admins"
REVIEWERS = "Security reviewers"
ROLE_OF_GROUP = {ADMINS: "console admin", REVIEWERS: "security reviewer"}


def may_view(user):
    """Console admins, security reviewers and superusers: whoever may read the audit log."""
    return bool(getattr(user, "is_active", False) and user.is_staff and user.has_perm("accounts.view_auditevent"))


def roles_of(user):
    """The console roles a user has, strongest first; ["none"] when none."""
    roles = ["superuser"] if user.is_superuser else []
    names = {g.name for g in user.groups.all()}
    roles += [label for group, label in ROLE_OF_GROUP.items() if group in names]
    return roles or ["none"]


def access_rows():
    """One row per user, in two queries whatever the number of users."""
    User = get_user_model()
    users = (
        User._default_manager.order_by("username")
        .prefetch_related(Prefetch("groups", queryset=Group.objects.order_by("name").only("name")))
        .annotate(two_factor=Exists(TOTPDevice.objects.filter(user=OuterRef("pk"), confirmed=True)))
    )
    return [
        {
            "user": user,
            "roles": roles_of(user),
            "can_sign_in": user.is_active and user.is_staff,
            "other_groups": [g.name for g in user.groups.all() if g.name not in ROLE_OF_GROUP],
        }
        for user in users
    ]


def access_view(request, admin_site):
    if not may_view(request.user):
        raise PermissionDenied
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET"])
    rows = access_rows()
    AuditEvent.record(request.user, "access.viewed", None, users=len(rows))
    return TemplateResponse(
        request,
        "accounts/access.html",
        {**admin_site.each_context(request), "title": "Access", "rows": rows},
    )
