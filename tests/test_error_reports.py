"""No secret on an error page (console/error_reports.py), even with DEBUG=True (the
`make run` default): a 500 forced on every form that takes a secret, and the filter's
rules one by one."""

import secrets

import pytest
from django.http import QueryDict
from django.test import RequestFactory
from django.urls import reverse
from django.views.debug import SafeExceptionReporterFilter, get_default_exception_reporter_filter

from console.error_reports import SecretSafeExceptionReporter, SecretSafeExceptionReporterFilter, is_secret_name
from keys import formats
from keys.models import ApiKey, Kind
from tests.test_admin import key_change_data, key_data, management, org_data, project_data


class Exploded(RuntimeError):
    pass


@pytest.fixture
def debug_client(admin_client, settings):
    settings.DEBUG = True
    admin_client.raise_request_exception = False
    return admin_client


@pytest.fixture
def save_explodes(monkeypatch):
    def explode(self, *args, **kwargs):
        raise Exploded("the save path failed")

    monkeypatch.setattr(ApiKey, "save", explode)


def assert_debug_page_without(response, *secrets_):
    assert response.status_code == 500
    page = response.content.decode()
    assert "Exploded" in page and "Traceback" in page  # Django's technical 500 page, not a bare 500
    for secret in secrets_:
        assert secret not in page
        if len(secret) > 40:
            assert secret[10:40] not in page  # not even a part of it


def row(prefix, **fields):
    return {f"{prefix}-0-{name}": value for name, value in fields.items()}


# --- every form that takes a secret --------------------------------------------------------
def test_the_admin_key_add_page_500_shows_no_secret(debug_client, save_explodes, org):
    secret = formats.generate(formats.ADMIN)
    response = debug_client.post(
        reverse("admin:keys_apikey_add"), key_data(secret, organization=org.pk, kind=Kind.ADMIN)
    )
    assert_debug_page_without(response, secret)


def test_the_key_change_page_500_shows_no_secret(debug_client, make_key, monkeypatch):
    key, old = make_key()
    new = formats.generate()
    monkeypatch.setattr(ApiKey, "save", lambda self, *a, **k: (_ for _ in ()).throw(Exploded("no")))
    # A new secret on the key page comes with a new destination (else it is refused first).
    moved = key_change_data(key, secret=new, base_url="http://127.0.0.1:9/v1")
    response = debug_client.post(reverse("admin:keys_apikey_change", args=[key.pk]), moved)
    assert_debug_page_without(response, new, old)


def test_a_key_row_on_the_project_page_500_shows_no_secret(debug_client, save_explodes, project):
    secret = formats.generate()
    data = project_data(
        project.organization,
        name=project.name,
        openai_project_id=project.openai_project_id,
        tier=project.tier_id,
        **management("api_keys", total=1),
        **row(
            "api_keys",
            project=project.pk,
            name="new row",
            kind=Kind.PROJECT,
            provider="openai",
            secret=secret,
            owner="",
            expires_at_0="",
            expires_at_1="",
        ),
    )
    response = debug_client.post(reverse("admin:accounts_project_change", args=[project.pk]), data)
    assert_debug_page_without(response, secret)


def test_an_admin_key_row_on_the_organization_page_500_shows_no_secret(debug_client, save_explodes, org):
    secret = formats.generate(formats.ADMIN)
    data = org_data(
        name=org.name,
        slug=org.slug,
        openai_org_id=org.openai_org_id,
        **management("api_keys", total=1),
        **row("api_keys", organization=org.pk, name="admin", secret=secret, owner="", expires_at_0="", expires_at_1=""),
    )
    response = debug_client.post(reverse("admin:accounts_organization_change", args=[org.pk]), data)
    assert_debug_page_without(response, secret)


def test_the_login_page_500_shows_no_password_or_code(client, settings, admin_user, monkeypatch):
    from axes.backends import AxesStandaloneBackend

    def explode(self, request, username=None, password=None, **kwargs):
        raise Exploded("authentication failed hard")

    monkeypatch.setattr(AxesStandaloneBackend, "authenticate", explode)
    settings.DEBUG = True
    client.raise_request_exception = False
    password, code = "pw-" + secrets.token_urlsafe(12), secrets.token_hex(5)
    response = client.post(
        reverse("admin:login"), {"username": admin_user.username, "password": password, "otp_token": code}
    )
    assert_debug_page_without(response, password, code)


def test_a_key_in_a_query_string_or_an_exception_message_is_not_on_the_page(debug_client, monkeypatch):
    secret = formats.generate()

    def explode(self, *args, **kwargs):
        raise Exploded(f"could not search for {secret}")

    from keys.admin import ApiKeyAdmin

    # (A key-shaped search itself is refused before any search runs: tests/test_inputs.py.)
    monkeypatch.setattr(ApiKeyAdmin, "get_queryset", explode)
    response = debug_client.get(reverse("admin:keys_apikey_changelist"), {"_changelist_filters": f"q=Bearer {secret}"})
    assert_debug_page_without(response, secret)


@pytest.fixture
def django_default_reporting(settings):
    settings.DEFAULT_EXCEPTION_REPORTER_FILTER = "django.views.debug.SafeExceptionReporterFilter"
    settings.DEFAULT_EXCEPTION_REPORTER = "django.views.debug.ExceptionReporter"
    get_default_exception_reporter_filter.cache_clear()  # Django caches the filter for the process
    yield
    settings.DEFAULT_EXCEPTION_REPORTER_FILTER = "console.error_reports.SecretSafeExceptionReporterFilter"
    get_default_exception_reporter_filter.cache_clear()


def test_without_this_filter_django_would_show_the_secret_in_debug(
    debug_client, save_explodes, org, django_default_reporting
):
    # The finding this module fixes: Django's own filter is off when DEBUG is on.
    secret = formats.generate(formats.ADMIN)
    response = debug_client.post(
        reverse("admin:keys_apikey_add"), key_data(secret, organization=org.pk, kind=Kind.ADMIN)
    )
    assert secret in response.content.decode()


# --- the filter's rules ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["secret", "api_keys-0-secret", "password", "password1", "new_password2", "old_password", "otp_token"]
)
def test_parameters_named_for_a_secret_are_cleansed(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["name", "secret_env", "secret_stdin", "api_keys-0-owner", "passwordless_note"])
def test_other_parameter_names_are_kept(name):
    assert not is_secret_name(name) or name == "passwordless_note"


def test_post_and_get_values_that_are_key_shaped_are_cleansed_whatever_their_name(settings):
    settings.DEBUG = True
    secret = formats.generate(formats.SERVICE_ACCOUNT)
    request = RequestFactory().post("/x/?note=x" + secret + "y&page=2", {"owner": f"Bearer {secret}", "name": "ok"})
    reporter_filter = SecretSafeExceptionReporterFilter()
    post = reporter_filter.get_post_parameters(request)
    get = reporter_filter.get_get_parameters(request)
    assert post["owner"] == reporter_filter.cleansed_substitute and post["name"] == "ok"
    assert get["note"] == reporter_filter.cleansed_substitute and get["page"] == "2"


def test_settings_are_cleansed_as_django_does_plus_url_passwords_and_key_shaped_values(settings):
    settings.REDIS_URL = "redis://:hunter2-redis-password@redis.internal:6379/0"
    settings.SOME_NOTE = "x" + formats.generate(formats.LEGACY)
    safe = SecretSafeExceptionReporterFilter().get_safe_settings()
    assert safe["CONSOLE_ENCRYPTION_KEYS"] == SafeExceptionReporterFilter.cleansed_substitute
    assert safe["CONSOLE_FINGERPRINT_KEY"] == SafeExceptionReporterFilter.cleansed_substitute
    assert safe["SECRET_KEY"] == SafeExceptionReporterFilter.cleansed_substitute
    assert "hunter2" not in safe["REDIS_URL"] and safe["REDIS_URL"].endswith("@redis.internal:6379/0")
    assert safe["SOME_NOTE"] == SafeExceptionReporterFilter.cleansed_substitute


def test_local_variables_named_for_or_holding_a_secret_are_cleansed():
    reporter_filter = SecretSafeExceptionReporterFilter()
    secret = formats.generate()

    def frame_with_locals():
        password = "pw-" + secrets.token_hex(8)  # noqa: F841
        raw = secret  # noqa: F841
        data = QueryDict(mutable=True)
        data["api_keys-0-secret"] = "anything"
        credentials = {"username": "alice", "password": "x"}  # noqa: F841
        fine = "hello"  # noqa: F841
        import sys

        return sys._getframe()

    variables = dict(reporter_filter.get_traceback_frame_variables(None, frame_with_locals()))
    star = reporter_filter.cleansed_substitute
    assert variables["password"] == star and variables["raw"] == star
    assert variables["data"]["api_keys-0-secret"] == star
    assert variables["credentials"] == {"username": "alice", "password": star}
    assert variables["fine"] == "hello"


def test_the_rendered_report_loses_any_key_shaped_value_left_in_it(settings):
    settings.DEBUG = True
    secret = formats.generate(formats.AZURE)
    request = RequestFactory().get("/")
    try:
        raise Exploded(f"upstream said {secret}")
    except Exploded:
        import sys

        reporter = SecretSafeExceptionReporter(request, *sys.exc_info())
        html, text = reporter.get_traceback_html(), reporter.get_traceback_text()
    assert "Exploded" in html and "Exploded" in text
    assert secret not in html and secret not in text
