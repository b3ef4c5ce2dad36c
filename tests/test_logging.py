"""Log lines people read: a refused or missing page is one warning line without a
traceback; a server error keeps its traceback."""

import logging

import pytest
from django.core.exceptions import PermissionDenied
from django.test import override_settings
from django.urls import path


def refuse(request):
    raise PermissionDenied


def explode(request):
    raise RuntimeError("boom")


urlpatterns = [path("refuse/", refuse), path("explode/", explode)]


def request_records(caplog):
    return [r for r in caplog.records if r.name == "django.request"]


@pytest.fixture
def configured_logging(settings):
    """The console's own LOGGING (the test settings may not apply it to the loggers)."""
    from logging.config import dictConfig

    dictConfig(settings.LOGGING)
    yield
    logging.getLogger("django.request").filters.clear()


@override_settings(ROOT_URLCONF=__name__)
def test_a_permission_denied_is_one_warning_without_a_traceback(client, caplog, configured_logging, db):
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert client.get("/refuse/").status_code == 403
    [record] = request_records(caplog)
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert "Traceback" not in caplog.text


@override_settings(ROOT_URLCONF=__name__)
def test_a_missing_page_is_one_warning_without_a_traceback(client, caplog, configured_logging, db):
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert client.get("/nowhere/").status_code == 404
    [record] = request_records(caplog)
    assert record.exc_info is None


@override_settings(ROOT_URLCONF=__name__)
def test_a_server_error_keeps_its_traceback(client, caplog, configured_logging, db):
    client.raise_request_exception = False
    with caplog.at_level(logging.ERROR, logger="django.request"):
        assert client.get("/explode/").status_code == 500
    [record] = request_records(caplog)
    assert record.exc_info is not None


def test_the_root_logger_has_one_handler(settings, configured_logging):
    """Each line once: one handler on the root, and no logger of ours adds another that
    the root would repeat."""
    assert len(settings.LOGGING["root"]["handlers"]) == 1
    assert all(not config.get("handlers") for config in settings.LOGGING["loggers"].values())


# --- no key in a log line, whoever logs it ---------------------------------------------------
@pytest.fixture
def log_output(configured_logging):
    """What the console's own handler writes, as text."""
    import io

    handler = logging.getLogger().handlers[0]
    stream = io.StringIO()
    previous = handler.setStream(stream)
    yield stream
    handler.setStream(previous)


@override_settings(ROOT_URLCONF=__name__)
def test_a_key_pasted_into_a_missing_url_is_cut_out_of_the_warning(client, log_output, db):
    from keys import formats

    openai_key, azure_key = formats.generate(formats.PROJECT), formats.generate(formats.AZURE)
    for secret in (openai_key, azure_key):
        assert client.get(f"/admin/keys/apikey/{secret}/change/").status_code == 404
    text = log_output.getvalue()
    assert text.count("Not Found: /admin/keys/apikey/[key-shaped value removed]/change/") == 2
    assert openai_key not in text and openai_key[20:60] not in text
    assert azure_key not in text


def test_an_openai_key_in_any_log_line_is_cut_out_but_request_ids_stay(log_output, settings):
    from keys import formats

    secret = formats.generate(formats.SERVICE_ACCOUNT)
    request_id = "req_" + "0123456789abcdef" * 2
    log = logging.getLogger("somelibrary")
    log.warning("calling with %s (%s)", secret, request_id)
    try:
        raise ValueError(f"bad key {secret}")
    except ValueError:
        log.exception("failed")
    text = log_output.getvalue()
    assert secret not in text and secret[15:70] not in text
    assert request_id in text  # a 32-hex run in a log line is a request id, not redacted


def test_the_json_format_cuts_keys_out_too(settings):
    from console.log_format import JsonFormatter
    from keys import formats

    secret = formats.generate(formats.ADMIN)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "key %s", (secret,), None)
    line = JsonFormatter().format(record)
    assert secret not in line and "[key-shaped value removed]" in line
