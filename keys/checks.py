"""Startup checks: refuse to run without usable encryption keys."""

from django.conf import settings
from django.core.checks import Error, Warning, register

from . import crypto

HOW = "Generate them with: python manage.py generate_encryption_key (see README, “Encryption keys”)."


@register()
def check_encryption_keys(app_configs, **kwargs):
    errors = []
    try:
        crypto.parse_keyring(settings.CONSOLE_ENCRYPTION_KEYS)
    except crypto.ConfigurationError as e:
        errors.append(Error(str(e), hint=HOW, id="keys.E001"))
    try:
        crypto.fingerprint_key()
    except crypto.ConfigurationError as e:
        errors.append(Error(str(e), hint=HOW, id="keys.E002"))
    return errors


@register(deploy=True)
def check_production_secrets(app_configs, **kwargs):
    warnings = []
    fp = settings.CONSOLE_FINGERPRINT_KEY
    if fp and any(entry.endswith(fp) for entry in settings.CONSOLE_ENCRYPTION_KEYS):
        warnings.append(
            Warning("CONSOLE_FINGERPRINT_KEY reuses an encryption key; use a separate value.", hint=HOW, id="keys.W001")
        )
    return warnings
