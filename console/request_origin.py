"""Who is asking and from where, for code far from the request that records it.

`RequestOriginMiddleware` keeps the current request for the length of one request (a
context variable: per thread and per asyncio task). The audit log reads it to stamp every
event with the client's address (`current_ip()`) and to name who changed a user's groups,
permissions or status from inside a model signal (`current_actor()`). Outside a request
there is no address; the actor is the label set with `acting_as("cli:<command>")` (every
management command does, console/leakguard.py), else None.

The address is the one django-axes counts login attempts under: REMOTE_ADDR, or, with
CONSOLE_LOGIN_PROXY_COUNT set, the address that many trusted proxies appended to
X-Forwarded-For. No other header is trusted.
"""

import contextlib
import contextvars

_request = contextvars.ContextVar("console_current_request", default=None)
_actor_label = contextvars.ContextVar("console_actor_label", default=None)


def client_ip(request):
    """The client's address for `request`, or None (a request made in-process)."""
    if request is None:
        return None
    ip = getattr(request, "axes_ip_address", None)
    if ip:
        return ip
    if not request.META.get("REMOTE_ADDR"):
        return None
    from axes.helpers import get_client_ip_address  # imports axes' models: not at app loading

    return get_client_ip_address(request) or None


def current_request():
    return _request.get()


def current_ip():
    """The client address of the request being served, or None outside a request."""
    request = _request.get()
    if request is None:
        return None
    if "_console_client_ip" not in request.__dict__:  # once per request: a cascade audits thousands
        request._console_client_ip = client_ip(request)
    return request._console_client_ip


def current_user():
    """The signed-in user of the request being served, or None."""
    request = _request.get()
    user = getattr(request, "user", None) if request is not None else None
    return user if getattr(user, "is_authenticated", False) else None


def current_actor():
    """The signed-in user of the request being served, else the label of the command
    running (`acting_as`), else None."""
    return current_user() or _actor_label.get()


@contextlib.contextmanager
def acting_as(label):
    """Name who acts for what runs inside, outside a request ("cli:ensure_admin")."""
    token = _actor_label.set(label)
    try:
        yield
    finally:
        _actor_label.reset(token)


class RequestOriginMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)
