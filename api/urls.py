from django.urls import path, re_path

from .endpoints import api, unknown_path

urlpatterns = [
    path("v1/", api.urls),
    # Anything else under /api/ is a JSON 404 in the API's error shape, not an HTML page.
    re_path(r"^.*$", unknown_path),
]
