"""A request id per HTTP request: in the `X-Request-ID` response header, on
`request.request_id`, and in a context variable every log line of the request carries
(console/log_format.py).

An incoming `X-Request-ID` (from the load balancer or a client) is kept only if it is a
UUID (`8-4-4-4-12` hex, as Heroku, Envoy and most proxies send) or a short token of at
most 20 letters, digits, `.`, `_`, `-` with nothing key-shaped in it: a header can
neither inject into the logs nor smuggle a secret, or a long piece of one, into them
(a 60-character slice of a key's body is refused). Otherwise a new UUID is made. (nginx's
`$request_id` is 32 bare hex digits — the shape of an Azure key — so it is replaced too;
send it as a UUID or let the console make one.)
"""

import contextvars
import re
import uuid

from console.upstream import is_keyish

HEADER = "X-Request-ID"
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
SHORT = re.compile(r"[A-Za-z0-9._-]{1,20}")

current = contextvars.ContextVar("request_id", default="")


def accept(value):
    """The incoming id if it is safe to log and echo, else None."""
    if UUID.fullmatch(value or ""):
        return value
    if SHORT.fullmatch(value or "") and "sk-" not in value and not is_keyish(value):
        return value
    return None


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = accept(request.headers.get(HEADER, "")) or str(uuid.uuid4())
        request.request_id = request_id
        token = current.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            current.reset(token)
        response[HEADER] = request_id
        return response
