"""The API's one error shape, for every status:

    {"error": {"code": "<stable code>", "message": "<for a person>", "fields": {...}}}

`fields` (only for 400) maps each refused input to its messages: {"secret": ["…"]}.
Messages never echo what was sent: pydantic's `input` is dropped, and the form's messages
(keys/forms.py) never hold a secret. A 500 logs its traceback on django.request (whose
reports are secret-safe, console/error_reports.py) and answers a fixed message; every
refusal's log line names the path with anything key-shaped removed (api/call_audit.py).
"""

from django.http import Http404
from django.utils.log import log_response
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError

from console.leakguard import redact_key_shaped

CODES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    429: "rate_limited",
    500: "internal_error",
}


class ApiError(Exception):
    """An answer other than success: raised anywhere below an endpoint (or its auth)."""

    def __init__(self, status, message, fields=None, headers=None, code=None):
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.fields = fields
        self.headers = headers or {}


def body(code, message, fields=None):
    error = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def fields_of_pydantic(errors):
    """{field: [message]} from ninja's validation errors, without the values sent."""
    fields = {}
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        # ("body", "payload", "name") / ("query", "limit"): drop the source and the
        # endpoint's parameter name, keep the path inside the document.
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
            if loc and loc[0] == "payload":
                loc = loc[1:]
        name = ".".join(loc) or "non_field_errors"
        fields.setdefault(name, []).append(str(error.get("msg", "Invalid value.")))
    return fields


def fields_of_form(form):
    """{field: [message]} from a Django form's errors ("__all__" as non_field_errors)."""
    return {
        ("non_field_errors" if name == "__all__" else name): [e["message"] for e in errors]
        for name, errors in form.errors.get_json_data().items()
    }


def install(api):
    """Every exception ninja hands the API becomes the one shape."""

    def respond(request, status, message, fields=None, headers=None, code=None):
        response = api.create_response(
            request, body(code or CODES.get(status, "error"), message, fields), status=status
        )
        for name, value in (headers or {}).items():
            response[name] = value
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response

    @api.exception_handler(ApiError)
    def api_error(request, exc):
        return respond(request, exc.status, exc.message, exc.fields, exc.headers, exc.code)

    @api.exception_handler(NinjaValidationError)
    def validation_error(request, exc):
        return respond(request, 400, "The request is not valid; nothing was changed.", fields_of_pydantic(exc.errors))

    @api.exception_handler(AuthenticationError)
    def authentication_error(request, exc):
        return respond(
            request, 401, "Send a valid API token: “Authorization: Bearer <token>” (unknown, expired or revoked)."
        )

    @api.exception_handler(HttpError)
    def http_error(request, exc):
        return respond(request, exc.status_code, str(exc))

    @api.exception_handler(Http404)
    def not_found(request, exc):
        return respond(request, 404, "Not found.")

    @api.exception_handler(Exception)
    def server_error(request, exc):
        response = respond(request, 500, "Internal error; it was logged.")
        path = logged_path(request)
        log_response("Internal Server Error: %s", path, response=response, request=request, exception=exc)
        return response


def logged_path(request):
    """The request's path as the logs and the audit log show it: anything key-shaped (a key
    pasted into a URL) removed."""
    return redact_key_shaped(request.path)[:300]
