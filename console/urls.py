from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

admin.site.site_header = "OpenAI platform console"
admin.site.site_title = "OpenAI console"
admin.site.index_title = "Organizations, projects and keys"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
]
