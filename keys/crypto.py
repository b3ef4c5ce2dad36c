"""Encryption at rest for API-key secrets.

AES-256-GCM with a random 96-bit nonce per encryption. The associated data binds a
ciphertext to its row (the ApiKey's UUID), to the master-key version that wrote it, and
to the destination the secret may be sent to (provider, base URL, Azure endpoint — the
row's `destination_binding()`), so a ciphertext copied to another row, relabelled with
another version, or left behind when the destination was changed without the secret
being pasted again (in SQL, in a restore, by a bug) fails to decrypt instead of being
sent somewhere new. Master keys come from settings.CONSOLE_ENCRYPTION_KEYS, newest first, each as
"v<N>:<urlsafe base64 of 32 bytes>"; the newest encrypts, every listed one decrypts.

Decryption fails closed: any problem raises DecryptionError (never returns the
ciphertext, never an empty string).

Duplicate detection uses a blind index: HMAC-SHA256 of the secret under a separate key
(settings.CONSOLE_FINGERPRINT_KEY), so rotating the encryption keys leaves it valid.
"""

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings

NONCE_BYTES = 12
KEY_SPEC = re.compile(r"^v(?P<version>[1-9][0-9]{0,4}):(?P<key>[A-Za-z0-9_\-]+=*)$")


class CryptoError(Exception):
    """Base class: nothing in these messages ever contains secret material."""


class ConfigurationError(CryptoError):
    pass


class DecryptionError(CryptoError):
    pass


class UnknownKeyVersion(DecryptionError):
    pass


@dataclass(frozen=True)
class Keyring:
    """Master keys by version; `current` is the version new ciphertexts are written with."""

    keys: dict
    current: int

    def aead(self, version):
        try:
            return AESGCM(self.keys[version])
        except KeyError:
            raise UnknownKeyVersion(
                f"Encryption key version v{version} is not configured in CONSOLE_ENCRYPTION_KEYS."
            ) from None


def generate_master_key(version=1):
    """A new master-key entry for CONSOLE_ENCRYPTION_KEYS, e.g. "v1:…"."""
    return f"v{version}:" + base64.urlsafe_b64encode(os.urandom(32)).decode()


def generate_fingerprint_key():
    return secrets.token_urlsafe(32)


def parse_keyring(entries):
    """Parse "v<N>:<base64>" entries (newest first). Raises ConfigurationError."""
    if isinstance(entries, str):
        entries = [e for e in entries.split(",")]
    entries = [e.strip() for e in entries if e and e.strip()]
    if not entries:
        raise ConfigurationError("CONSOLE_ENCRYPTION_KEYS is empty.")
    keys = {}
    order = []
    for position, entry in enumerate(entries, start=1):
        match = KEY_SPEC.match(entry)
        if not match:
            raise ConfigurationError(
                f'CONSOLE_ENCRYPTION_KEYS entry {position} is not of the form "v<N>:<base64 of 32 bytes>".'
            )
        version = int(match["version"])
        try:
            raw = base64.urlsafe_b64decode(match["key"])
        except (ValueError, TypeError):
            raise ConfigurationError(f"CONSOLE_ENCRYPTION_KEYS entry v{version} is not valid base64.") from None
        if len(raw) != 32:
            raise ConfigurationError(
                f"CONSOLE_ENCRYPTION_KEYS entry v{version} decodes to {len(raw)} bytes; AES-256 needs 32."
            )
        if version in keys:
            raise ConfigurationError(f"CONSOLE_ENCRYPTION_KEYS lists version v{version} twice.")
        keys[version] = raw
        order.append(version)
    if order[0] != max(order):
        raise ConfigurationError(
            "CONSOLE_ENCRYPTION_KEYS must list the newest (highest) version first; "
            f"v{order[0]} is listed before v{max(order)}."
        )
    return Keyring(keys=keys, current=order[0])


@lru_cache(maxsize=4)
def _keyring_for(entries):
    return parse_keyring(list(entries))


def keyring():
    return _keyring_for(tuple(settings.CONSOLE_ENCRYPTION_KEYS))


def fingerprint_key():
    value = settings.CONSOLE_FINGERPRINT_KEY
    if not value or len(value) < 32:
        raise ConfigurationError("CONSOLE_FINGERPRINT_KEY is missing or shorter than 32 characters.")
    return value.encode()


def associated_data(row_id, version, binding=""):
    """What a ciphertext is bound to: its row, the master-key version, and `binding`
    (the destination the secret may be sent to)."""
    return f"console.apikey:{row_id}:v{version}:to={binding}".encode()


def encrypt(plaintext: str, row_id, ring=None, binding=""):
    """Encrypt under the newest master key. Returns (ciphertext bytes, version)."""
    ring = ring or keyring()
    nonce = os.urandom(NONCE_BYTES)
    aad = associated_data(row_id, ring.current, binding)
    body = ring.aead(ring.current).encrypt(nonce, plaintext.encode(), aad)
    return nonce + body, ring.current


def decrypt(ciphertext, version, row_id, ring=None, binding="") -> str:
    """Decrypt a ciphertext written for `row_id` and `binding` under master-key `version`.

    Raises DecryptionError (or UnknownKeyVersion) on anything but a clean decryption.
    """
    ring = ring or keyring()
    if version is None:
        raise DecryptionError("This secret has no encryption-key version.")
    aead = ring.aead(version)
    data = bytes(ciphertext or b"")
    if len(data) < NONCE_BYTES + 16:
        raise DecryptionError("Stored ciphertext is missing or truncated.")
    try:
        plain = aead.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], associated_data(row_id, version, binding))
    except InvalidTag:
        raise DecryptionError(
            f"Secret of key {row_id} failed authentication under v{version}: wrong master key, a "
            "ciphertext that does not belong to this row, or a destination changed without the secret."
        ) from None
    return plain.decode()


def fingerprint(plaintext: str) -> str:
    """Blind index of a secret: hex HMAC-SHA256 under CONSOLE_FINGERPRINT_KEY."""
    return hmac.new(fingerprint_key(), plaintext.encode(), hashlib.sha256).hexdigest()
