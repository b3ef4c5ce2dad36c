"""Startup checks (keys/checks.py), the production example environment under
`check --deploy`, and generate_encryption_key."""

import base64
import io
import os
import secrets
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


PLACEHOLDER_ERRORS = {
    "keys.E003": "SECRET_KEY is still a placeholder",
    "keys.E004": "CONSOLE_ENCRYPTION_KEYS is still a placeholder",
    "keys.E005": "CONSOLE_FINGERPRINT_KEY is still a placeholder",
    "keys.E006": "The password of database “default” (DATABASE_URL) is still a placeholder",
}


def filled_example(tmp_path):
    """The example with every CHANGE-ME value replaced by a freshly generated one."""
    variables, _ = example_variables()
    values = {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "CONSOLE_ENCRYPTION_KEYS": crypto.generate_master_key(1),
        "CONSOLE_FINGERPRINT_KEY": crypto.generate_fingerprint_key(),
        "DATABASE_URL": variables["DATABASE_URL"].replace("CHANGE-ME", secrets.token_urlsafe(32)),
    }
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        name = line.partition("=")[0]
        lines.append(f"{name}={values[name]}" if name in values and not line.startswith("#") else line)
    path = tmp_path / "env"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_check_deploy_fails_on_the_production_example_naming_each_placeholder():
    result = check_deploy(EXAMPLE)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for check_id, message in PLACEHOLDER_ERRORS.items():
        assert f"({check_id}) {message}" in output
    assert "python manage.py generate_encryption_key --fingerprint" in output
    assert "secrets.token_urlsafe(50)" in output


def test_check_deploy_passes_with_no_warnings_once_real_values_replace_the_placeholders(tmp_path):
    result = check_deploy(filled_example(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


def test_check_deploy_reads_the_example_file_so_a_weakened_copy_fails(tmp_path):
    weakened = filled_example(tmp_path)
    weakened.write_text(weakened.read_text().replace("SESSION_COOKIE_SECURE=true", "SESSION_COOKIE_SECURE=false"))
    result = check_deploy(weakened)
    assert result.returncode != 0
    assert "security.W012" in result.stdout + result.stderr
    assert "keys.E00" not in result.stdout + result.stderr


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


def test_the_production_example_holds_change_me_placeholders_only_and_says_so():
    variables, lines = example_variables()
    for name in ("SECRET_KEY", "CONSOLE_ENCRYPTION_KEYS", "CONSOLE_FINGERPRINT_KEY", "DATABASE_URL"):
        assert "CHANGE-ME" in variables[name]
        assert checks.is_placeholder(variables[name])
        assert lines[lines.index(f"{name}={variables[name]}") - 1].startswith("# ")
    assert "FAILS with this file as is" in "\n".join(lines[:5])
    for value in variables.values():
        for word in value.replace(",", " ").replace("=", " ").split():
            with pytest.raises(formats.KeyFormatError):
                formats.check_shape(word)


def test_the_example_encryption_key_placeholder_is_not_a_key_at_all():
    with pytest.raises(crypto.ConfigurationError):
        crypto.parse_keyring(example_variables()[0]["CONSOLE_ENCRYPTION_KEYS"])


@pytest.mark.parametrize(
    "name, value, check_id",
    [
        ("SECRET_KEY", "CHANGE-ME-to-50-or-more-random-characters-never-commit-the-real-one", "keys.E003"),
        ("SECRET_KEY", "PLACEHOLDER-change-me-to-50-or-more-random-characters-never-commit", "keys.E003"),
        ("CONSOLE_ENCRYPTION_KEYS", ["CHANGE-ME:run-python-manage.py-generate_encryption_key"], "keys.E004"),
        ("CONSOLE_FINGERPRINT_KEY", "CHANGE-ME-run-python-manage.py-generate_encryption_key", "keys.E005"),
        ("CONSOLE_FINGERPRINT_KEY", "changeme" * 5, "keys.E005"),
    ],
)
def test_a_placeholder_value_is_its_own_error_saying_what_to_generate(settings, name, value, check_id):
    setattr(settings, name, value)
    found = errors_by_id(checks.check_encryption_keys(None) + checks.check_placeholder_secrets(None))
    assert set(found) == {check_id}
    assert "Generate one with:" in found[check_id].hint


def test_the_old_examples_valid_placeholder_key_is_refused_by_what_it_decodes_to(settings):
    # Copies of the previous example carry a working AES key whose bytes read "PLACEHOLDER:…".
    material = base64.urlsafe_b64encode(b"PLACEHOLDER:generate-your-own-v1").decode()
    settings.CONSOLE_ENCRYPTION_KEYS = [crypto.generate_master_key(2), f"v1:{material}"]
    assert [e.id for e in checks.check_encryption_keys(None)] == ["keys.E004"]


def test_a_placeholder_database_password_is_error_e006(settings, monkeypatch):
    monkeypatch.setitem(settings.DATABASES["default"], "PASSWORD", "CHANGE-ME")
    assert [e.id for e in checks.check_placeholder_secrets(None)] == ["keys.E006"]


def test_real_secrets_are_not_placeholders():
    assert checks.check_placeholder_secrets(None) == []
    assert not checks.is_placeholder(secrets.token_urlsafe(50))


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
