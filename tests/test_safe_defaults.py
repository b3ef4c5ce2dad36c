"""Refusing to start with a bad configuration (console/startup.py): the web entry points
(wsgi, asgi, runserver) and Celery workers, in real subprocesses, plus the stored-secret
self-test (keys.E007). The example env file's placeholders are in tests/test_checks.py."""

import subprocess
import sys

import pytest
from django.core.checks import Error

from console import startup
from keys import checks, crypto
from tests.workers import ROOT, Worker, worker_env

MALFORMED = "v1:not-a-key"
STORED = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def import_entry_point(module, **env):
    return subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=ROOT,
        env=worker_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_worker(tmp_path, **env):
    """Start a worker that should refuse to start; returns (exit code, its log). A worker
    that starts anyway is stopped (so it cannot take other tests' tasks) and fails the test."""
    worker = Worker(tmp_path, concurrency=1, **env)
    try:
        with pytest.raises(RuntimeError, match="celery worker exited with") as exited:
            worker.start(timeout=60)
    finally:
        worker.stop()
    return worker.proc.returncode, str(exited.value)


def assert_no_key_material(output, *entries):
    for entry in entries:
        assert entry.split(":", 1)[1] not in output


# --- the self-test -----------------------------------------------------------------------
def test_the_self_test_passes_when_the_keys_decrypt_the_newest_secret(make_key):
    make_key()
    assert checks.check_keys_decrypt_stored_secrets(None, databases=["default"]) == []


def test_the_self_test_has_nothing_to_test_without_stored_keys(db, settings):
    settings.CONSOLE_ENCRYPTION_KEYS = [crypto.generate_master_key(1)]
    assert checks.check_keys_decrypt_stored_secrets(None, databases=["default"]) == []


def test_the_self_test_is_error_e007_under_a_well_formed_wrong_key_without_key_material(make_key, settings):
    make_key()
    wrong = crypto.generate_master_key(1)
    settings.CONSOLE_ENCRYPTION_KEYS = [wrong]
    [error] = checks.check_keys_decrypt_stored_secrets(None, databases=["default"])
    assert error.id == "keys.E007"
    assert error.msg.startswith("The configured CONSOLE_ENCRYPTION_KEYS cannot decrypt stored secrets: wrong key?")
    assert_no_key_material(str(error), wrong)


def test_the_self_test_names_a_missing_version(make_key, settings):
    make_key()
    settings.CONSOLE_ENCRYPTION_KEYS = [crypto.generate_master_key(7)]
    [error] = checks.check_keys_decrypt_stored_secrets(None, databases=["default"])
    assert "a version they do not list" in error.msg and "(v7)" in error.msg


def test_the_self_test_passes_if_only_an_older_row_is_damaged(make_key):
    damaged, _ = make_key()
    make_key()
    type(damaged).objects.filter(pk=damaged.pk).update(secret_ciphertext=b"\0" * 40)
    assert checks.check_keys_decrypt_stored_secrets(None, databases=["default"]) == []


def test_the_self_test_runs_only_when_databases_are_checked(make_key, settings):
    make_key()
    settings.CONSOLE_ENCRYPTION_KEYS = [crypto.generate_master_key(1)]
    assert checks.check_keys_decrypt_stored_secrets(None) == []


def test_startup_collects_errors_and_ignores_warnings(monkeypatch):
    from django.core import checks as django_checks

    def fake_run_checks(**kwargs):
        return [Error("broken", id="x.E001"), django_checks.Warning("meh", id="x.W001")]

    monkeypatch.setattr(django_checks, "run_checks", fake_run_checks)
    with pytest.raises(startup.BadConfiguration, match=r"Refusing to start the web server.*\n.*x\.E001") as e:
        startup.refuse_to_start_web()
    assert "x.W001" not in str(e.value)


# --- the web: wsgi, asgi, runserver ------------------------------------------------------
@pytest.mark.parametrize("module", ["console.wsgi", "console.asgi"])
def test_the_web_entry_points_refuse_to_load_with_a_malformed_key(db, module):
    result = import_entry_point(module, CONSOLE_ENCRYPTION_KEYS=MALFORMED)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Refusing to start the web server" in output
    assert "(keys.E001) CONSOLE_ENCRYPTION_KEYS entry v1" in output


@STORED
@pytest.mark.parametrize("module", ["console.wsgi", "console.asgi"])
def test_the_web_entry_points_refuse_to_load_when_the_key_cannot_decrypt_stored_secrets(make_key, module):
    make_key()
    wrong = crypto.generate_master_key(1)
    result = import_entry_point(module, CONSOLE_ENCRYPTION_KEYS=wrong)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "(keys.E007) The configured CONSOLE_ENCRYPTION_KEYS cannot decrypt stored secrets: wrong key?" in output
    assert_no_key_material(output, wrong)


@STORED
def test_the_wsgi_application_loads_with_the_right_keys_and_a_stored_row(make_key):
    make_key()
    result = import_entry_point("console.wsgi")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Refusing" not in result.stdout + result.stderr


@STORED
def test_runserver_refuses_to_serve_when_the_key_cannot_decrypt_stored_secrets(make_key):
    make_key()
    result = subprocess.run(
        [sys.executable, "manage.py", "runserver", "--noreload", "127.0.0.1:0"],
        cwd=ROOT,
        env=worker_env(CONSOLE_ENCRYPTION_KEYS=crypto.generate_master_key(1)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "(keys.E007)" in result.stdout + result.stderr


# --- Celery workers ----------------------------------------------------------------------
@STORED
def test_a_worker_with_a_malformed_key_exits_non_zero_with_the_message(tmp_path):
    code, log = start_worker(tmp_path, CONSOLE_ENCRYPTION_KEYS=MALFORMED)
    assert code != 0
    assert "Refusing to start the Celery worker" in log
    assert "(keys.E001) CONSOLE_ENCRYPTION_KEYS entry v1" in log


@STORED
def test_a_worker_whose_key_cannot_decrypt_the_stored_row_exits_non_zero(tmp_path, make_key):
    make_key()
    wrong = crypto.generate_master_key(1)
    code, log = start_worker(tmp_path, CONSOLE_ENCRYPTION_KEYS=wrong)
    assert code != 0
    assert "(keys.E007) The configured CONSOLE_ENCRYPTION_KEYS cannot decrypt stored secrets: wrong key?" in log
    assert_no_key_material(log, wrong)


@STORED
def test_a_worker_with_the_right_key_and_a_stored_row_starts(tmp_path, make_key):
    make_key()
    with Worker(tmp_path, concurrency=1) as worker:
        assert " ready." in worker.read_log()
        assert "Refusing" not in worker.read_log()
