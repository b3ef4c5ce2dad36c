"""Startup checks (keys/checks.py), the production example environment under
`check --deploy`, and generate_encryption_key."""

import io
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError

from keys import checks, crypto, formats

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / ".env.production.example"


def errors_by_id(messages):
    return {m.id: m for m in messages}


@pytest.mark.parametrize(
    "keys, message",
    [
        ([], "CONSOLE_ENCRYPTION_KEYS is empty."),
        (["v1:tooshort"], "CONSOLE_ENCRYPTION_KEYS entry v1"),
        (["not-a-key"], 'entry 1 is not of the form "v<N>:<base64 of 32 bytes>"'),
    ],
)
def test_missing_or_invalid_encryption_keys_are_error_e001_saying_how_to_generate_them(settings, keys, message):
    settings.CONSOLE_ENCRYPTION_KEYS = keys
    found = errors_by_id(checks.check_encryption_keys(None))
    assert message in found["keys.E001"].msg
    assert "python manage.py generate_encryption_key" in found["keys.E001"].hint
    assert "keys.E002" not in found


@pytest.mark.parametrize("value", ["", "short"])
def test_a_missing_or_short_fingerprint_key_is_error_e002_saying_how_to_generate_it(settings, value):
    settings.CONSOLE_FINGERPRINT_KEY = value
    found = errors_by_id(checks.check_encryption_keys(None))
    assert "CONSOLE_FINGERPRINT_KEY is missing or shorter than 32 characters." in found["keys.E002"].msg
    assert "generate_encryption_key" in found["keys.E002"].hint
    assert "keys.E001" not in found


def test_usable_keys_pass_the_check():
    assert checks.check_encryption_keys(None) == []


def test_manage_py_check_fails_without_encryption_keys(settings):
    settings.CONSOLE_ENCRYPTION_KEYS = []
    with pytest.raises(SystemCheckError, match="keys.E001"):
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())


def test_a_fingerprint_key_that_reuses_an_encryption_key_is_a_deploy_warning(settings):
    material = crypto.generate_master_key(1).split(":", 1)[1]
    settings.CONSOLE_ENCRYPTION_KEYS = [f"v1:{material}"]
    settings.CONSOLE_FINGERPRINT_KEY = material
    assert [w.id for w in checks.check_production_secrets(None)] == ["keys.W001"]


# --- .env.production.example ------------------------------------------------------------
def example_variables(path=EXAMPLE):
    """{name: value} of every assignment in an env file, and the lines as read."""
    lines = path.read_text().splitlines()
    variables = {}
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            variables[name.strip()] = value.strip()
    return variables, lines


def check_deploy(env_file):
    # Drop every variable the file sets, so the file (not the test environment) decides.
    names = example_variables(env_file)[0]
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(CONSOLE_ENV_FILE=str(env_file), DJANGO_SETTINGS_MODULE="console.settings")
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_check_deploy_passes_with_no_warnings_on_the_production_example():
    result = check_deploy(EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


def test_check_deploy_reads_the_example_file_so_a_weakened_copy_fails(tmp_path):
    weakened = tmp_path / "env"
    weakened.write_text(EXAMPLE.read_text().replace("SESSION_COOKIE_SECURE=true", "SESSION_COOKIE_SECURE=false"))
    result = check_deploy(weakened)
    assert result.returncode != 0
    assert "security.W012" in result.stdout + result.stderr


def test_the_production_example_sets_every_production_variable_with_a_comment():
    variables, lines = example_variables()
    expected = {
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "true",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
        "SECURE_HSTS_PRELOAD": "true",
        "SESSION_COOKIE_SECURE": "true",
        "CSRF_COOKIE_SECURE": "true",
        "SECURE_PROXY_SSL_HEADER": "true",
        "OPENAI_BASE_URL": "https://api.openai.com/v1",
    }
    for name, value in expected.items():
        assert variables[name] == value
    for name in (
        "SECRET_KEY",
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        "CONSOLE_ENCRYPTION_KEYS",
        "CONSOLE_FINGERPRINT_KEY",
    ):
        assert variables[name]
    assert variables["DATABASE_URL"].startswith("postgres://")
    assert variables["REDIS_URL"].startswith("redis://")
    for n, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            assert lines[n - 1].startswith("# "), f"{line.split('=')[0]} has no comment above it"


def test_the_production_example_holds_placeholders_only():
    variables, lines = example_variables()
    assert "PLACEHOLDER" in variables["SECRET_KEY"]
    assert "PLACEHOLDER" in variables["CONSOLE_FINGERPRINT_KEY"]
    ring = crypto.parse_keyring(variables["CONSOLE_ENCRYPTION_KEYS"])
    assert ring.keys[ring.current].startswith(b"PLACEHOLDER")  # readable, so no one mistakes it for a key
    keys_line = lines.index(f"CONSOLE_ENCRYPTION_KEYS={variables['CONSOLE_ENCRYPTION_KEYS']}")
    assert "PLACEHOLDER — generate your own" in lines[keys_line - 1]
    for value in variables.values():
        for word in value.replace(",", " ").replace("=", " ").split():
            with pytest.raises(formats.KeyFormatError):
                formats.check_shape(word)


# --- generate_encryption_key ----------------------------------------------------------------
def generate(*args):
    out = io.StringIO()
    call_command("generate_encryption_key", *args, stdout=out)
    return out.getvalue().strip()


def test_generate_encryption_key_prints_a_master_key_that_parses_and_encrypts(settings):
    value = generate()
    assert value != generate()
    ring = crypto.parse_keyring(value)
    assert ring.current == 1
    settings.CONSOLE_ENCRYPTION_KEYS = [value]
    row = uuid.uuid4()
    ciphertext, version = crypto.encrypt("a secret", row)
    assert crypto.decrypt(ciphertext, version, row) == "a secret"


def test_generate_encryption_key_tags_the_version_asked_for(settings):
    old = settings.CONSOLE_ENCRYPTION_KEYS[0]
    value = generate("--version", "3")
    assert value.startswith("v3:")
    assert crypto.parse_keyring(f"{value},{old}").current == 3


def test_generate_encryption_key_refuses_version_zero():
    with pytest.raises(CommandError, match="--version must be 1 or more"):
        generate("--version", "0")


def test_generate_encryption_key_prints_a_usable_fingerprint_key(settings):
    value = generate("--fingerprint")
    assert len(value) >= 32
    settings.CONSOLE_FINGERPRINT_KEY = value
    assert checks.check_encryption_keys(None) == []
    assert len(crypto.fingerprint("a secret")) == 64
