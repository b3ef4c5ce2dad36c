from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

# admin.site is console.admin_site.ConsoleAdminSite (console/apps.py).
urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/", include("api.urls")),  # the REST API (api/endpoints.py)
]
