from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

# admin.site is console.admin_site.ConsoleAdminSite (console/apps.py).
urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
]
