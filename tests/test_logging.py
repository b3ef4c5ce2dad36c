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
