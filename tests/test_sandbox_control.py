"""The sandbox's control API answers only loopback Host headers and JSON POSTs, and
`manage.py sandbox_api` refuses a non-loopback bind address unless told --allow-remote.

A web page in the operator's browser can POST `text/plain` cross-site without a CORS
preflight, and a DNS-rebinding page reaches 127.0.0.1 under its own host name: either
could otherwise register keys, reset the sandbox or read its stats."""

import json

import httpx2
import pytest
from django.core.management import CommandError, call_command

from keys import formats
from sandbox.app import is_loopback_host
from sandbox.management.commands import sandbox_api

HTTP = httpx2.Client(timeout=10)
POST_ROUTES = {
    "/_sandbox/keys": {"key": "placeholder", "fault": "healthy"},
    "/_sandbox/reset": {},
    "/_sandbox/settings": {"latency_ms": 0},
    "/_sandbox/admin": {"organization": "org-ControlTest01"},
}


def get_models(sandbox, secret):
    return HTTP.get(sandbox.openai_url + "/models", headers={"Authorization": f"Bearer {secret}"})


@pytest.mark.parametrize("route", POST_ROUTES)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_control_post_that_is_not_json_is_refused_with_415(sandbox, route, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = HTTP.post(sandbox.root + route, content=json.dumps(POST_ROUTES[route]), headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


def test_a_text_plain_registration_or_reset_changes_nothing(sandbox):
    kept = formats.generate()
    sandbox.register(kept)
    refused = formats.generate()
    plain = {"Content-Type": "text/plain"}
    HTTP.post(sandbox.root + "/_sandbox/keys", content=json.dumps({"key": refused}), headers=plain)
    HTTP.post(sandbox.root + "/_sandbox/reset", content="{}", headers=plain)
    assert get_models(sandbox, refused).status_code == 401  # never registered
    assert get_models(sandbox, kept).status_code == 200  # not reset


def test_a_json_post_with_a_charset_is_accepted(sandbox):
    secret = formats.generate()
    response = HTTP.post(
        sandbox.root + "/_sandbox/keys",
        content=json.dumps({"key": secret}),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201
    assert get_models(sandbox, secret).status_code == 200


@pytest.mark.parametrize("route", [*POST_ROUTES, "/_sandbox/stats", "/_sandbox/health"])
@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "localhost.evil.example:8100", "10.0.0.1"])
def test_a_control_request_to_a_non_loopback_host_is_refused_with_403(sandbox, route, host):
    method = "POST" if route in POST_ROUTES else "GET"
    body = POST_ROUTES.get(route)
    response = HTTP.request(method, sandbox.root + route, json=body, headers={"Host": host})
    assert response.status_code == 403
    assert "loopback" in response.json()["error"]


def test_a_reset_sent_with_a_foreign_host_changes_nothing(sandbox):
    secret = formats.generate()
    sandbox.register(secret)
    HTTP.post(sandbox.root + "/_sandbox/reset", json={}, headers={"Host": "rebound.example"})
    assert get_models(sandbox, secret).status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "localhost", "LOCALHOST:{port}", "[::1]:{port}"])
def test_the_control_api_answers_loopback_host_headers(sandbox, host):
    port = sandbox.root.rsplit(":", 1)[1]
    response = HTTP.get(sandbox.root + "/_sandbox/stats", headers={"Host": host.format(port=port)})
    assert response.status_code == 200 and "total" in response.json()


@pytest.mark.parametrize(
    "host,expected",
    [
        ("127.0.0.1", True),
        ("127.0.0.1:8100", True),
        ("127.1.2.3:80", True),
        ("localhost:8100", True),
        ("[::1]", True),
        ("[::1]:8100", True),
        ("", False),
        (None, False),
        ("::1", False),  # an IPv6 Host must be bracketed
        ("[::1]x", False),
        ("127.0.0.1:port", False),
        ("localhost.:8100", False),
        ("0.0.0.0:8100", False),
        ("192.168.1.10", False),
        ("[::ffff:7f00:1]", False),
        ("example.com", False),
    ],
)
def test_is_loopback_host_accepts_only_loopback_names_and_addresses(host, expected):
    assert is_loopback_host(host) is expected


def test_the_api_itself_still_answers_any_host(sandbox):
    # Only the control surface is pinned to loopback; the OpenAI surface behaves as upstream.
    secret = formats.generate()
    sandbox.register(secret)
    response = HTTP.get(
        sandbox.openai_url + "/models", headers={"Authorization": f"Bearer {secret}", "Host": "api.openai.example"}
    )
    assert response.status_code == 200


# --- manage.py sandbox_api -------------------------------------------------------------


@pytest.fixture
def served(monkeypatch):
    """Replace uvicorn.run, the only place the command binds a socket, with a recorder."""
    calls = []
    monkeypatch.setattr(sandbox_api.uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "sandbox.example"])
def test_sandbox_api_refuses_a_non_loopback_host_before_binding(served, host):
    with pytest.raises(CommandError, match=f"Refusing to bind the sandbox API to {host}.*--allow-remote"):
        call_command("sandbox_api", "--host", host, "--port", "8199")
    assert served == []


def test_sandbox_api_binds_a_non_loopback_host_with_allow_remote(served, capsys):
    call_command("sandbox_api", "--host", "0.0.0.0", "--port", "8199", "--allow-remote")
    assert [(call["host"], call["port"]) for call in served] == [("0.0.0.0", 8199)]
    assert "unauthenticated control API is exposed" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_sandbox_api_binds_loopback_without_being_told(served, host):
    call_command("sandbox_api", "--host", host, "--port", "8199")
    assert [call["host"] for call in served] == [host]
