"""Every REST API call made with a known token is an audit event ("api.call"): the
token's id and prefix, its user as the actor, the method, the path and the status. One
INSERT per call; the path is stored with anything key-shaped removed (a key pasted into
a URL stays out of the audit log) and never with its query string.

And a 4xx or 5xx under /api/ is logged here, as Django would ("Not Found: /api/…"), but
with the same redacted path, before Django's own handler logs the raw one. django-ninja's
405 (a plain-text page) is given the API's error shape on the way out."""

from django.http import JsonResponse
from django.utils.log import log_response

from accounts.models import AuditEvent

from .errors import body, logged_path


class ApiCallAuditMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code == 405 and request.path.startswith("/api/") and "json" not in response["Content-Type"]:
            allowed = response.get("Allow", "")
            response = JsonResponse(body("method_not_allowed", f"Allowed: {allowed}."), status=405)
            response["Allow"] = allowed
        if response.status_code >= 400 and request.path.startswith("/api/"):
            log_response("%s: %s", response.reason_phrase, logged_path(request), response=response, request=request)
        token = getattr(request, "api_token", None)
        if token is not None and not getattr(request, "api_call_unaudited", False):
            AuditEvent.record(
                token.user,
                "api.call",
                token,
                token=token.pk,
                token_prefix=token.prefix,
                method=request.method,
                path=logged_path(request),
                status=response.status_code,
            )
        return response
