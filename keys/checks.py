"""Startup checks: refuse to run without usable encryption keys.

`manage.py check` runs the plain ones; console/startup.py runs them all (including the
database-tagged self-test below) when gunicorn, uvicorn, runserver or a Celery worker
starts, and refuses to start on any error. Messages never contain key material.

    keys.E001  CONSOLE_ENCRYPTION_KEYS missing or malformed
    keys.E002  CONSOLE_FINGERPRINT_KEY missing or short
    keys.E003  SECRET_KEY is still a placeholder (e.g. from .env.production.example)
    keys.E004  CONSOLE_ENCRYPTION_KEYS is still a placeholder
    keys.E005  CONSOLE_FINGERPRINT_KEY is still a placeholder
    keys.E006  the database password is still a placeholder
    keys.E007  the configured CONSOLE_ENCRYPTION_KEYS cannot decrypt stored secrets
    keys.W002  the stored secrets could not be read to test the keys (database not ready)
"""

import re

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import DatabaseError

from . import crypto

HOW = "Generate them with: .venv/bin/python manage.py generate_encryption_key (see README, “Encryption keys”)."

# What a placeholder looks like: .env.production.example marks every value to replace
# with CHANGE-ME; older copies said PLACEHOLDER. Case and separators do not matter.
PLACEHOLDER = re.compile(r"change[-_ ]?me|placeholder", re.IGNORECASE)

HOW_SECRET_KEY = (
    'Generate one with: python -c "import secrets; print(secrets.token_urlsafe(50))" '
    "and set SECRET_KEY to it (never commit it)."
)
HOW_ENCRYPTION_KEYS = (
    "Generate one with: .venv/bin/python manage.py generate_encryption_key, and set CONSOLE_ENCRYPTION_KEYS to it "
    '(newest first, "v2:…,v1:…"; see README, “Encryption keys”).'
)
HOW_FINGERPRINT_KEY = (
    "Generate one with: .venv/bin/python manage.py generate_encryption_key --fingerprint, and set "
    "CONSOLE_FINGERPRINT_KEY to it (never the same value as an encryption key)."
)
HOW_DATABASE_PASSWORD = (
    'Generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))", set it on the '
    "database role (ALTER ROLE … PASSWORD '…') and in DATABASE_URL."
)


def is_placeholder(value):
    """True if `value` (text or bytes) carries a placeholder marker such as CHANGE-ME."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return bool(value) and PLACEHOLDER.search(str(value)) is not None


def _keyring_is_placeholder(entries):
    # The marker in the text of an entry, or in the bytes it decodes to: an older example
    # shipped a valid key whose 32 bytes read "PLACEHOLDER:…", and copies of it live on.
    if any(is_placeholder(entry) for entry in entries):
        return True
    try:
        ring = crypto.parse_keyring(entries)
    except crypto.ConfigurationError:
        return False
    return any(is_placeholder(raw) for raw in ring.keys.values())


@register()
def check_encryption_keys(app_configs, **kwargs):
    errors = []
    if _keyring_is_placeholder(settings.CONSOLE_ENCRYPTION_KEYS):
        errors.append(
            Error(
                "CONSOLE_ENCRYPTION_KEYS is still a placeholder: every secret would be encrypted under a key "
                "printed in the repository.",
                hint=HOW_ENCRYPTION_KEYS,
                id="keys.E004",
            )
        )
    else:
        try:
            crypto.parse_keyring(settings.CONSOLE_ENCRYPTION_KEYS)
        except crypto.ConfigurationError as e:
            errors.append(Error(str(e), hint=HOW, id="keys.E001"))
    if is_placeholder(settings.CONSOLE_FINGERPRINT_KEY):
        message = "CONSOLE_FINGERPRINT_KEY is still a placeholder."
        errors.append(Error(message, hint=HOW_FINGERPRINT_KEY, id="keys.E005"))
    else:
        try:
            crypto.fingerprint_key()
        except crypto.ConfigurationError as e:
            errors.append(Error(str(e), hint=HOW, id="keys.E002"))
    return errors


@register()
def check_placeholder_secrets(app_configs, **kwargs):
    """SECRET_KEY and the database passwords must not be the example's placeholders."""
    errors = []
    if is_placeholder(settings.SECRET_KEY):
        errors.append(Error("SECRET_KEY is still a placeholder.", hint=HOW_SECRET_KEY, id="keys.E003"))
    for alias, database in settings.DATABASES.items():
        if is_placeholder(database.get("PASSWORD")):
            errors.append(
                Error(
                    f"The password of database “{alias}” (DATABASE_URL) is still a placeholder.",
                    hint=HOW_DATABASE_PASSWORD,
                    id="keys.E006",
                )
            )
    return errors


SELF_TEST_ROWS = 3


@register(Tags.database)
def check_keys_decrypt_stored_secrets(app_configs, databases=None, **kwargs):
    """Self-test: the configured keys decrypt the newest stored secret.

    A well-formed but wrong CONSOLE_ENCRYPTION_KEYS passes every other check, and then
    every probe fails. Runs only when databases are checked (`check --database default`,
    and at start-up). The newest few rows are tried so that one damaged row alone cannot
    keep the service down; with no rows there is nothing to test.
    """
    if not databases:
        return []
    from .models import ApiKey  # checks are imported while apps load

    try:
        ring = crypto.keyring()
    except crypto.ConfigurationError:
        return []  # keys.E001 already says so
    try:
        rows = list(ApiKey.objects.order_by("-created", "-pk")[:SELF_TEST_ROWS])
    except DatabaseError:
        return [
            Warning(
                "Could not read stored secrets to test CONSOLE_ENCRYPTION_KEYS (is the database migrated and up?).",
                id="keys.W002",
            )
        ]
    if not rows:
        return []
    failures = []
    for row in rows:
        try:
            row.reveal_secret()  # the plaintext is dropped at once
        except crypto.DecryptionError as e:
            failures.append(e)
        else:
            return []
    versions = ", ".join(f"v{v}" for v in sorted(ring.keys, reverse=True))
    reason = "a version they do not list" if isinstance(failures[0], crypto.UnknownKeyVersion) else "wrong key?"
    return [
        Error(
            f"The configured CONSOLE_ENCRYPTION_KEYS cannot decrypt stored secrets: {reason} "
            f"The newest {len(rows)} stored key(s) failed under the configured versions ({versions}).",
            hint="Restore the CONSOLE_ENCRYPTION_KEYS these secrets were written with (keep old versions listed "
            "after the newest until rewrap_keys has run).",
            id="keys.E007",
        )
    ]


@register(deploy=True)
def check_production_secrets(app_configs, **kwargs):
    warnings = []
    fp = settings.CONSOLE_FINGERPRINT_KEY
    if fp and any(entry.endswith(fp) for entry in settings.CONSOLE_ENCRYPTION_KEYS):
        warnings.append(
            Warning("CONSOLE_FINGERPRINT_KEY reuses an encryption key; use a separate value.", hint=HOW, id="keys.W001")
        )
    return warnings


@register()
def check_probe_lease_outlasts_redelivery(app_configs, **kwargs):
    """A claimed key's lease must outlast the broker's redelivery of its batch, or a batch
    whose worker died is both redelivered and claimed again by a sweep: two probes."""
    redelivery = settings.CELERY_VISIBILITY_TIMEOUT + settings.CELERY_TASK_TIME_LIMIT
    if settings.PROBE_LEASE_SECONDS > redelivery:
        return []
    return [
        Error(
            f"PROBE_LEASE_SECONDS ({settings.PROBE_LEASE_SECONDS}) must exceed CELERY_VISIBILITY_TIMEOUT + "
            f"CELERY_TASK_TIME_LIMIT ({redelivery}): a redelivered batch would probe keys a sweep already claimed "
            "again.",
            hint="Leave PROBE_LEASE_SECONDS unset (it is derived from the Celery settings) or raise it.",
            id="keys.E010",
        )
    ]
