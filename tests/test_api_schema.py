"""schemathesis against the REST API's own OpenAPI document (/api/v1/openapi.json), run
in-process on the Django WSGI app with a console admin's token: for every operation,
generated inputs (valid and invalid) never give a 500, every answer matches the schema
(status, content type, body, headers), and no registered secret — a canary registered
through the API — ever comes back. Bounded: a few examples per operation."""

import json

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test.utils import override_settings
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.models import ApiToken
from keys import formats
from keys.models import ApiKey

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture
def api_world(admin_user, project, client):
    """An admin token, and a canary key registered through the API itself."""
    token = ApiToken(user=admin_user, name="schemathesis")
    plaintext = token.issue()
    token.save()
    canary = formats.generate()
    response = client.post(
        "/api/v1/keys",
        json.dumps({"project": project.pk, "name": "canary", "secret": canary}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {plaintext}"},
    )
    assert response.status_code == 201, response.content
    key = ApiKey.objects.get(name="canary")
    return {
        "token": plaintext,
        "forbidden": [canary, canary.removeprefix("sk-proj-")[:40], key.fingerprint, key.secret_ciphertext.hex()],
    }


@pytest.fixture
def on_the_tests_connection(api_world):
    """Calls are served in-process on the test's own database connection: as Django's test
    client does, keep the request signals from closing it after each call. (After
    api_world: Django's test client reconnects them when it is done.)"""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield api_world
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


# Loaded from the stable URL, through the WSGI app (the document needs no database).
# (schemathesis.pytest.from_fixture would load it lazily, but fails on pytest 9.)
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", WSGIHandler())


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@override_settings(API_RATE_LIMIT_PER_MINUTE=100_000)
def test_the_api_keeps_its_schema_never_fails_and_never_answers_a_secret(case, on_the_tests_connection):
    api_world = on_the_tests_connection
    response = case.call_and_validate(headers={"Authorization": f"Bearer {api_world['token']}"}, checks=CHECKS)
    for value in api_world["forbidden"]:
        assert value not in response.text, f"{case.method} {case.formatted_path} answered a secret"
