"""Every REST API call made with a known token is an audit event ("api.call"): the
token's id and prefix, its user as the actor, the method, the path and the status. One
INSERT per call; the path is stored with anything key-shaped removed (a key pasted into
a URL stays out of the audit log) and never with its query string."""

from accounts.models import AuditEvent
from console.leakguard import redact_key_shaped


class ApiCallAuditMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        token = getattr(request, "api_token", None)
        if token is not None and not getattr(request, "api_call_unaudited", False):
            AuditEvent.record(
                token.user,
                "api.call",
                token,
                token=token.pk,
                token_prefix=token.prefix,
                method=request.method,
                path=redact_key_shaped(request.path)[:300],
                status=response.status_code,
            )
        return response
