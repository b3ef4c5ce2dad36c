"""The console's admin site: every page of the console is one of its views.

On top of Django's AdminSite it adds the login hardening (README, "Login and sessions"):

- the login form takes an optional two-factor code (accounts/two_factor.py);
- a user with a confirmed device counts as logged in only once a code verified the
  session: force_login or a session from before enrolment gets the login page;
- with CONSOLE_REQUIRE_2FA on, a signed-in user without a device is sent to the
  enrolment page from every admin URL but that page and logout;
- the "Two-factor authentication" pages at two-factor/;
- `lockout_response`: what django-axes answers a locked-out login with (the login page
  with the reason, HTTP 429), instead of a bare text.

And the read-only "Access" page (access/, accounts/access.py), listed under the accounts app;
and the progress pages of jobs started from the admin (jobs/, accounts/job_admin.py).

The index is the dashboard (console/dashboard.py: panels the apps register; the template is
templates/admin/index.html), with the app list below it.
"""

from functools import update_wrapper

from axes.helpers import get_cool_off
from django.contrib import admin
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import render
from django.urls import path, reverse
from django.utils import timezone

from accounts import access, job_admin, two_factor

from . import dashboard


class ConsoleAdminSite(admin.AdminSite):
    site_header = "OpenAI platform console"
    site_title = "OpenAI console"
    index_title = "Organizations, projects and keys"
    login_form = two_factor.LoginForm

    def has_permission(self, request):
        return super().has_permission(request) and not two_factor.is_second_factor_pending(request.user)

    def admin_view(self, view, cacheable=False):
        """Django's wrapper (permission, CSRF, never_cache) around a check that sends
        users who must enrol in two-factor to the enrolment page first."""

        def enrolled_first(request, *args, **kwargs):
            if two_factor.needs_enrolment(request.user) and not self.is_allowed_before_enrolment(view):
                return HttpResponseRedirect(reverse("admin:two_factor", current_app=self.name))
            return view(request, *args, **kwargs)

        return super().admin_view(update_wrapper(enrolled_first, view), cacheable)

    def is_allowed_before_enrolment(self, view):
        return view == self.logout or getattr(view, "allowed_before_enrolment", False)

    def get_urls(self):
        def site_view(function):
            def view(request):
                return function(request, self)

            view.allowed_before_enrolment = True
            return self.admin_view(update_wrapper(view, function))

        return [
            path("two-factor/", site_view(two_factor.two_factor_view), name="two_factor"),
            path(
                "two-factor/recovery-codes/",
                site_view(two_factor.regenerate_recovery_codes_view),
                name="two_factor_recovery_codes",
            ),
            path("two-factor/disable/", site_view(two_factor.disable_view), name="two_factor_disable"),
            path("access/", self.admin_view(self.access_page), name="access"),
            path("jobs/", self.admin_view(self.jobs_page), name="jobs"),
            path("jobs/<int:pk>/", self.admin_view(self.job_page), name="job"),
            path("jobs/<int:pk>/status/", self.admin_view(self.job_status), name="job_status"),
        ] + super().get_urls()

    def access_page(self, request):
        """Who has access, with which role (accounts/access.py)."""
        return access.access_view(request, self)

    # Jobs started from the admin (a sync, an ingest window): their progress pages
    # (accounts/job_admin.py).
    def jobs_page(self, request):
        return job_admin.jobs_view(request, self)

    def job_page(self, request, pk):
        return job_admin.job_view(request, self, pk)

    def job_status(self, request, pk):
        return job_admin.job_status_view(request, self, pk)

    def get_app_list(self, request, app_label=None):
        apps = super().get_app_list(request, app_label)
        if access.may_view(request.user):
            for app in apps:
                if app["app_label"] == "accounts":  # the Access page, next to the audit log
                    url = reverse("admin:access", current_app=self.name)
                    page = {"name": "Access", "object_name": "Access", "admin_url": url, "view_only": True}
                    app["models"].append(page)
        return apps

    def index(self, request, extra_context=None):
        """The dashboard above the app list, for everyone with admin access. It only reads:
        anything but GET or HEAD is refused (405)."""
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        context = {"dashboard": dashboard.gather(timezone.now(), request.user)}
        return super().index(request, {**context, **(extra_context or {})})

    def login(self, request, extra_context=None):
        context = {"second_factor_pending": two_factor.is_second_factor_pending(request.user)}
        return super().login(request, {**context, **(extra_context or {})})


def lockout_response(request, original_response=None, credentials=None):
    """The admin login page saying the login is locked and for how long (AXES_LOCKOUT_CALLABLE)."""
    site = admin.site
    cool_off = get_cool_off(request)
    minutes = max(round(cool_off.total_seconds() / 60), 1) if cool_off else None
    context = {
        **site.each_context(request),
        "title": "Log in",
        "app_path": request.get_full_path(),
        "form": site.login_form(request),
        "lockout_minutes": minutes,
        "is_locked_out": True,
    }
    return render(request, site.login_template or "admin/login.html", context, status=429)
