from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from console import health, metrics

# admin.site is console.admin_site.ConsoleAdminSite (console/apps.py).
urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
    # Outside the admin: no login, no 2FA, no lockout (docs/OPERATIONS.md).
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("api/", include("api.urls")),  # the REST API (api/endpoints.py)
]
