"""The sandbox API: a local stand-in for OpenAI and Azure OpenAI, with a fault plan per key.

API surface (shapes as in shared/reference/openai-api.md):
    GET /v1/models, /v1/models/{model}, /v1/me      Authorization: Bearer <key>
    /v1/organization/{projects,users,admin_api_keys,spend_alerts,audit_logs}/…  (sandbox/admin_api.py),
    GET /v1/organization/usage/{endpoint}, /v1/organization/costs        admin keys only
    GET /openai/models?api-version=…, /openai/v1/models    api-key: <key>
Control surface (no auth; loopback Host headers only, POSTs in JSON only; the server binds
to loopback unless told otherwise):
    POST /_sandbox/keys, /_sandbox/reset, /_sandbox/settings, /_sandbox/usage, /_sandbox/usage/bump,
    /_sandbox/admin; GET /_sandbox/admin, /_sandbox/stats, /_sandbox/health

Everything is async on one event loop, so a slow or hanging key never blocks another.
`build_app()` returns the ASGI app; `python manage.py sandbox_api` serves it with uvicorn.
"""

import asyncio
import ipaddress
import json
import re
import secrets
import time
import uuid
from dataclasses import replace

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox import admin_api, errors, usage
from sandbox.ratelimit import WINDOW_SECONDS
from sandbox.state import PlanError, Sandbox, digest

OPENAI = "openai"
AZURE = "azure"
HANG_SECONDS = 3600.0
TRANSPORT = "sandbox.transport"  # scope key set by ExposeTransport
CONTROL_PREFIX = "/_sandbox/"
API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")

MODELS = [
    ("gpt-4o-mini", 1721172741),
    ("gpt-4o", 1715367049),
    ("gpt-4.1-mini", 1744318173),
    ("o3-mini", 1737146383),
    ("text-embedding-3-small", 1705948997),
]


def openai_models():
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "system"} for name, created in MODELS],
    }


def azure_models():
    """Azure's data-plane list: lifecycle and capabilities instead of owned_by."""
    data = [
        {
            "id": name,
            "object": "model",
            "created_at": created,
            "status": "succeeded",
            "lifecycle_status": "generally-available",
            "capabilities": {
                "fine_tune": False,
                "inference": True,
                "completion": False,
                "chat_completion": not name.startswith("text-embedding"),
                "embeddings": name.startswith("text-embedding"),
            },
        }
        for name, created in MODELS
    ]
    return {"data": data, "object": "list"}


def me(plan):
    """A user object like GET /v1/me answers (the endpoint is not in OpenAI's published spec)."""
    user_id = "user-" + plan.organization_header().split("-", 1)[-1][:24]
    org_id = plan.organization or "org-" + user_id[5:]
    return {
        "object": "user",
        "id": user_id,
        "email": f"{user_id}@sandbox.invalid",
        "name": "Sandbox User",
        "picture": None,
        "created": 1700000000,
        "phone_number": None,
        "mfa_flag_enabled": False,
        "orgs": {
            "object": "list",
            "data": [
                {
                    "object": "organization",
                    "id": org_id,
                    "created": 1700000000,
                    "title": "Sandbox Org",
                    "name": org_id,
                    "description": "An organization served by the local sandbox API",
                    "personal": False,
                    "is_default": True,
                    "role": "owner",
                    "projects": {
                        "object": "list",
                        "data": [{"id": plan.project, "object": "project", "title": plan.project, "role": "owner"}],
                    },
                }
            ],
        },
    }


class DropConnection(Response):
    """Not a response at all: abort the TCP connection so the client sees it drop (a reset),
    rather than a 500. Needs the transport ExposeTransport put in the scope."""

    def __init__(self):
        super().__init__(status_code=500)

    async def __call__(self, scope, receive, send):
        transport = scope.get(TRANSPORT)
        if transport is None:
            raise RuntimeError("The server does not expose its transport; cannot drop the connection.")
        transport.abort()
        # Let the loop run the transport's connection_lost, so uvicorn sees the client gone
        # and does not try to send a 500 of its own.
        for _ in range(3):
            await asyncio.sleep(0)


class ExposeTransport:
    """Raw ASGI wrapper: put the connection's transport in the scope for DropConnection.

    uvicorn's `send` is a bound method of its request cycle, which holds the transport. ASGI
    has no portable way to drop a connection, so this reaches in, and says so if it cannot."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope[TRANSPORT] = getattr(getattr(send, "__self__", None), "transport", None)
        await self.app(scope, receive, send)


async def pause(request, seconds):
    """Wait `seconds`, or less if the client disconnects. True means the client went away."""
    if seconds <= 0:
        return False

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
        return bool(done)
    finally:
        watcher.cancel()


def presented_key(request, surface):
    """The secret the client sent: Bearer on /v1; api-key (or Bearer, as Azure's v1 surface
    and Entra clients use) on /openai."""
    if surface == AZURE and request.headers.get("api-key"):
        return request.headers["api-key"].strip()
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


class Call:
    """One API request in progress: builds its responses with the real headers."""

    def __init__(self, surface, plan=None):
        self.surface = surface
        self.plan = plan
        self.snapshot = None
        self.started = time.monotonic()

    def headers(self, extra=None):
        headers = {
            "x-request-id": "req_" + secrets.token_hex(16),
            "openai-version": "2020-10-01",
            "openai-processing-ms": str(int((time.monotonic() - self.started) * 1000)),
        }
        if self.surface == AZURE:
            headers["apim-request-id"] = str(uuid.uuid4())
        if self.plan:
            headers["openai-organization"] = self.plan.organization_header()
        if self.snapshot:
            headers.update(self.snapshot.headers())
        headers.update(extra or {})
        return headers

    def json(self, body, status=200, extra=None):
        return JSONResponse(body, status_code=status, headers=self.headers(extra))

    def error(self, status, openai_body, azure_message=None, extra=None):
        """An error in the surface's own shape: OpenAI's four fields, or Azure's code+message."""
        body = errors.azure_error(status, azure_message) if self.surface == AZURE else openai_body
        return self.json(body, status, extra)


async def serve(request, surface, answer):
    """Run one API request through its key's fault plan; `answer(plan)` is the 200 body."""
    sandbox = request.app.state.sandbox
    with sandbox.stats.request():
        secret = presented_key(request, surface)
        plan = sandbox.lookup(secret)
        # Counted before anything can end the request (a client gone during the latency, a
        # wrong surface, a refusal): every request that reaches the sandbox with a key counts.
        sandbox.stats.record(plan)
        if await pause(request, sandbox.latency_ms / 1000):
            return Response(status_code=499)
        if plan and plan.provider != surface:
            plan = None  # an OpenAI key is as unknown to Azure as a made-up one, and vice versa
        call = Call(surface, plan)
        api_version = request.query_params.get("api-version", "")
        if surface == AZURE and request.url.path == "/openai/models" and not API_VERSION.match(api_version):
            return call.error(404, None)
        if plan is None:
            return call.error(401, errors.invalid_api_key(secret) if secret else errors.missing_key())
        response = await follow_plan(request, call, sandbox, answer)
        if response.status_code < 400:  # the Administration API's last_used_at
            sandbox.last_used[digest(secret)] = int(time.time())
        return response


async def follow_plan(request, call, sandbox, answer):
    plan = call.plan
    if plan.delay_ms and await pause(request, plan.delay_ms / 1000):
        return Response(status_code=499)
    fault = plan.fault
    if fault == "hanging":
        await pause(request, HANG_SECONDS)
        return Response(status_code=499)
    if fault == "reset":
        return DropConnection()
    # Authentication, authorization and billing come before rate limiting, as upstream.
    if fault == "revoked":
        return call.error(401, errors.invalid_api_key(presented_key(request, call.surface)))
    if fault == "auth_other":
        return call.error(401, errors.no_organization())
    if fault == "forbidden":
        return call.error(403, errors.unsupported_country())
    if fault == "quota":
        return call.error(
            429,
            errors.insufficient_quota(type_only=plan.quota_type_only),
            "Your subscription has run out of quota for this resource. Check your plan and billing details.",
        )
    window = sandbox.window(plan.project)
    if fault == "throttled":
        snapshot = window.snapshot()
        call.snapshot = replace(
            snapshot, remaining_requests=0, reset_requests=snapshot.reset_requests or WINDOW_SECONDS
        )
        return throttled(call)
    allowed, call.snapshot = window.take()
    if not allowed:
        return throttled(call)
    if fault == "not_found":
        return call.error(404, errors.invalid_url(request.method, request.url.path))
    if fault == "server_error" or (fault == "flaky" and plan.next_call_fails()):
        return server_side(call, 500, errors.server_error())
    if fault == "bad_gateway":
        return server_side(call, 502, errors.bad_gateway())
    if fault == "unavailable":
        return server_side(call, 503, errors.overloaded())
    if fault == "malformed":
        return Response("<html>oops</html>", media_type="text/html", headers=call.headers())
    return answer(call)


def server_side(call, status, body):
    """A 5xx, with `x-should-retry` when the key's plan sets should_retry (the SDK obeys it
    over its own status-based rule)."""
    extra = {}
    if call.plan.should_retry is not None:
        extra["x-should-retry"] = "true" if call.plan.should_retry else "false"
    return call.error(status, body, extra=extra)


def throttled(call):
    """429 rate_limit_exceeded. retry-after is the plan's `retry_after` if set, else the
    seconds left in the window; retry-after-ms is sent only when the plan sets it."""
    plan = call.plan
    retry_after = call.snapshot.retry_after() if plan.retry_after is None else plan.retry_after
    extra = {"retry-after": str(retry_after)}
    if plan.retry_after_ms is not None:
        extra["retry-after-ms"] = str(plan.retry_after_ms)
    return call.error(
        429,
        errors.rate_limit_exceeded(
            plan.organization_header(), call.snapshot.limit_requests, call.snapshot.limit_requests, retry_after
        ),
        f"{errors.AZURE_MESSAGES[429]} Please retry after {retry_after} seconds.",
        extra=extra,
    )


async def retrieve_model(request):
    name = request.path_params["model"]

    def answer(call):
        for model in openai_models()["data"]:
            if model["id"] == name:
                return call.json(model)
        return call.error(404, errors.model_not_found(name))

    return await serve(request, OPENAI, answer_unless_admin(answer))


async def list_models(request):
    return await serve(request, OPENAI, answer_unless_admin(lambda call: call.json(openai_models())))


def answer_unless_admin(answer):
    """Inference-side endpoints refuse admin keys."""

    def guarded(call):
        if call.plan.is_admin:
            return call.error(403, errors.admin_key_on_api_endpoint())
        return answer(call)

    return guarded


def admin_endpoint(handlers):
    """The Administration API route serving `handlers` (method → handler in
    sandbox/admin_api.py): admin keys only, after the key's fault plan, then any fault
    seeded for the route (POST /_sandbox/admin "faults")."""

    async def endpoint(request):
        handler = handlers.get(request.method)
        if handler is None:
            return await unknown_route(request)
        raw_body = await request.body() if request.method == "POST" else b""

        def answer(call):
            if not call.plan.is_admin:
                return call.error(403, errors.missing_admin_scope())
            sandbox = request.app.state.sandbox
            secret = presented_key(request, OPENAI)
            key_digest = digest(secret)
            org = admin_api.organization(sandbox, call.plan, key_digest)
            fault = admin_api.injected_fault(org, request.method, request.url.path)
            if fault is not None:
                return seeded_fault(call, sandbox, fault, secret)
            status, body = admin_api.handle(
                handler, sandbox, call.plan, key_digest, request.path_params, request.query_params, raw_body,
                int(time.time()),
            )  # fmt: skip
            return call.json(body, status)

        return await serve(request, OPENAI, answer)

    return endpoint


def seeded_fault(call, sandbox, fault, secret):
    """Answer as the key's plan would for `fault.fault` (see follow_plan), with the fault's
    retry_after / should_retry."""
    call.plan = replace(call.plan, retry_after=fault.retry_after, should_retry=fault.should_retry)
    kind = fault.fault
    if kind == "revoked":
        return call.error(401, errors.invalid_api_key(secret))
    if kind == "auth_other":
        return call.error(401, errors.no_organization())
    if kind == "forbidden":
        return call.error(403, errors.unsupported_country())
    if kind == "quota":
        return call.error(429, errors.insufficient_quota())
    if kind == "throttled":
        snapshot = sandbox.window(call.plan.project).snapshot()
        call.snapshot = replace(
            snapshot, remaining_requests=0, reset_requests=snapshot.reset_requests or WINDOW_SECONDS
        )
        return throttled(call)
    status, body = {
        "server_error": (500, errors.server_error()),
        "bad_gateway": (502, errors.bad_gateway()),
        "unavailable": (503, errors.overloaded()),
    }[kind]
    return server_side(call, status, body)


def organization_usage(request, endpoint):
    """The answer of a usage endpoint (`endpoint` a name in usage.ENDPOINTS) or of the costs
    endpoint (None): the admin key's usage plan paged per the query, 400 for a query the
    API refuses. An admin key without a plan gets empty buckets."""

    def answer(call):
        if not call.plan.is_admin:
            return call.error(403, errors.missing_admin_scope())
        now = int(time.time())
        try:
            query = usage.parse_query(request.query_params, now, endpoint)
            plan = request.app.state.sandbox.usage_plan(presented_key(request, OPENAI))
            return call.json(usage.page(plan, query, now, endpoint))
        except usage.UsageError as e:
            return call.error(400, errors.invalid_parameter(str(e), e.param))

    return answer


async def get_usage(request):
    endpoint = request.path_params["endpoint"]
    if endpoint not in usage.ENDPOINTS:
        return await unknown_route(request)
    return await serve(request, OPENAI, organization_usage(request, endpoint))


async def get_costs(request):
    return await serve(request, OPENAI, organization_usage(request, None))


async def get_me(request):
    return await serve(request, OPENAI, lambda call: call.json(me(call.plan)))


async def azure_list_models(request):
    return await serve(request, AZURE, lambda call: call.json(azure_models()))


async def azure_v1_list_models(request):
    # The v1 surface speaks the OpenAI shape (the plain OpenAI client reads it).
    return await serve(request, AZURE, lambda call: call.json(openai_models()))


async def unknown_route(request):
    surface = AZURE if request.url.path.startswith("/openai/") else OPENAI
    call = Call(surface)
    if request.url.path.startswith(CONTROL_PREFIX):
        return call.error(404, errors.invalid_url(request.method, request.url.path))
    # A request to a path the sandbox does not serve still reached it: count it for its key.
    sandbox = request.app.state.sandbox
    with sandbox.stats.request():
        sandbox.stats.record(sandbox.lookup(presented_key(request, surface)))
        return call.error(404, errors.invalid_url(request.method, request.url.path))


# --- Control surface -----------------------------------------------------------------
#
# The control API has no authentication, so two checks keep a web page in the operator's
# browser from driving it: the Host header must name a loopback address (a DNS-rebinding
# page sends its own host name), and a POST must be `application/json` (a cross-site form or
# a `text/plain` fetch needs no CORS preflight; JSON does, and the sandbox answers none).


def is_loopback_host(host):
    """True for a Host header naming this machine over loopback: `localhost`, an address in
    127.0.0.0/8, or `[::1]`, each with an optional port. Anything else, or nothing, is False."""
    host = (host or "").strip().lower()
    if host.startswith("["):
        address, bracket, port = host[1:].partition("]")
        if not bracket or (port and not re.fullmatch(r":\d{1,5}", port)):
            return False
    else:
        address, _, port = host.partition(":")
        if port and not re.fullmatch(r"\d{1,5}", port):
            return False
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def control_route(handler):
    """Guard a control endpoint: 403 unless the Host header is a loopback name or address,
    then 415 for a request with a body (POST) that is not `Content-Type: application/json`."""

    async def guarded(request):
        if not is_loopback_host(request.headers.get("host")):
            return JSONResponse(
                {"error": "The sandbox control API answers only requests addressed to a loopback host."},
                status_code=403,
            )
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and media_type != "application/json":
            return JSONResponse(
                {"error": "The sandbox control API takes Content-Type: application/json."}, status_code=415
            )
        return await handler(request)

    guarded.__name__ = handler.__name__
    guarded.__doc__ = handler.__doc__
    return guarded


async def read_json(request):
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def register_key(request):
    """Register (or replace) a key's plan. The response names the key by its hint only."""
    body = await read_json(request)
    if body is None:
        return JSONResponse({"error": "Send a JSON object."}, status_code=400)
    secret = body.pop("key", None)
    try:
        plan = request.app.state.sandbox.register(secret, **body)
    except PlanError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    except TypeError:
        return JSONResponse({"error": "Unexpected fields in the registration."}, status_code=400)
    return JSONResponse(
        {"hint": plan.hint, "project": plan.project, "fault": plan.fault, "provider": plan.provider}, status_code=201
    )


async def reset(request):
    request.app.state.sandbox.reset()
    return JSONResponse({"reset": True})


async def update_settings(request):
    body = await read_json(request)
    latency = (body or {}).get("latency_ms")
    if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
        return JSONResponse({"error": 'Send {"latency_ms": <integer ≥ 0>}.'}, status_code=400)
    request.app.state.sandbox.latency_ms = latency
    return JSONResponse({"latency_ms": latency})


async def set_usage(request):
    """Give a registered admin key a usage plan: {"key", "keys": [{"id", "project"}],
    "projects", "models", "seed", "repeat_cursor", "endless"}."""
    body = await read_json(request)
    if body is None:
        return JSONResponse({"error": "Send a JSON object."}, status_code=400)
    secret = body.pop("key", None)
    try:
        plan = request.app.state.sandbox.set_usage(secret, **body)
    except PlanError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    return JSONResponse({"keys": len(plan.keys), "projects": plan.projects, "models": plan.models}, status_code=201)


async def bump_usage(request):
    """Late data: {"key", "day": unix seconds, "factor"} multiplies that UTC day's numbers."""
    body = await read_json(request)
    if body is None or set(body) - {"key", "day", "factor"}:
        return JSONResponse({"error": 'Send {"key", "day", "factor"}.'}, status_code=400)
    try:
        day = request.app.state.sandbox.bump_usage(body.get("key"), body.get("day"), body.get("factor", 1.0))
    except PlanError as e:
        return JSONResponse({"error": str(e)}, status_code=400)
    return JSONResponse({"day": day})


async def admin_state(request):
    """POST: seed or replace an organization's Administration API state (admin_api.seed);
    GET ?organization=…: its counts and the admin calls made, per route."""
    sandbox = request.app.state.sandbox
    if request.method == "GET":
        org = sandbox.admin.get(request.query_params.get("organization", ""))
        if org is None:
            return JSONResponse({"error": "No such organization in the sandbox."}, status_code=404)
        return JSONResponse(admin_api.summary(org))
    body = await read_json(request)
    if body is None:
        return JSONResponse({"error": "Send a JSON object."}, status_code=400)
    try:
        return JSONResponse(admin_api.seed(sandbox, body, int(time.time())), status_code=201)
    except admin_api.SeedError as e:
        return JSONResponse({"error": str(e)}, status_code=400)


async def stats(request):
    return JSONResponse(request.app.state.sandbox.stats.as_json())


async def health(request):
    return JSONResponse({"status": "ok"})


ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def build_app(latency_ms=0):
    """The ASGI app with fresh in-memory state."""
    app = Starlette(
        routes=[
            Route("/v1/models", list_models),
            Route("/v1/models/{model}", retrieve_model),
            Route("/v1/me", get_me),
            *[Route(path, admin_endpoint(handlers), methods=list(handlers)) for path, handlers in admin_api.ROUTES],
            Route("/v1/organization/usage/{endpoint}", get_usage),
            Route("/v1/organization/costs", get_costs),
            Route("/openai/models", azure_list_models),
            Route("/openai/v1/models", azure_v1_list_models),
            Route("/_sandbox/keys", control_route(register_key), methods=["POST"]),
            Route("/_sandbox/reset", control_route(reset), methods=["POST"]),
            Route("/_sandbox/settings", control_route(update_settings), methods=["POST"]),
            Route("/_sandbox/usage", control_route(set_usage), methods=["POST"]),
            Route("/_sandbox/usage/bump", control_route(bump_usage), methods=["POST"]),
            Route("/_sandbox/admin", control_route(admin_state), methods=["GET", "POST"]),
            Route("/_sandbox/stats", control_route(stats)),
            Route("/_sandbox/health", control_route(health)),
            Route("/{path:path}", unknown_route, methods=ALL_METHODS),
        ]
    )
    app.state.sandbox = Sandbox(latency_ms=latency_ms)
    return ExposeTransport(app)
