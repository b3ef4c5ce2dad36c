"""Encryption at rest (keys/crypto.py): round trips, row binding, failing closed,
keyring parsing, the fingerprint blind index and master-key versions."""

import base64
import hashlib
import os
import uuid

import pytest
from django.db import connection
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from keys import crypto, formats
from keys.models import ApiKey


def master_key(version):
    return crypto.generate_master_key(version)


def material(entry):
    """The base64 part of a "v<N>:<base64>" entry."""
    return entry.split(":", 1)[1]


ROW = uuid.uuid4()


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.text())
def test_decrypt_returns_what_encrypt_was_given_for_any_text(plaintext):
    ciphertext, version = crypto.encrypt(plaintext, ROW)
    assert crypto.decrypt(ciphertext, version, ROW) == plaintext


def test_two_encryptions_of_the_same_secret_differ():
    secret = formats.generate()
    first, _ = crypto.encrypt(secret, ROW)
    second, _ = crypto.encrypt(secret, ROW)
    assert first != second
    assert secret.encode() not in first


def test_ciphertext_does_not_decrypt_for_another_row():
    ciphertext, version = crypto.encrypt(formats.generate(), ROW)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(ciphertext, version, uuid.uuid4())


def test_swapping_ciphertexts_between_rows_in_sql_makes_both_fail_to_decrypt(make_key):
    first, first_secret = make_key()
    second, second_secret = make_key()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE keys_apikey SET secret_ciphertext = %s WHERE id = %s", [bytes(second.secret_ciphertext), first.pk]
        )
        cursor.execute(
            "UPDATE keys_apikey SET secret_ciphertext = %s WHERE id = %s", [bytes(first.secret_ciphertext), second.pk]
        )
    for key in (ApiKey.objects.get(pk=first.pk), ApiKey.objects.get(pk=second.pk)):
        with pytest.raises(crypto.DecryptionError) as excinfo:
            key.reveal_secret()
        assert first_secret not in str(excinfo.value)
        assert second_secret not in str(excinfo.value)


def test_relabelling_the_key_version_fails_even_when_both_versions_hold_the_same_key(settings, make_key):
    # Same key bytes under v2 and v1: only the associated data tells them apart.
    same = material(master_key(1))
    settings.CONSOLE_ENCRYPTION_KEYS = [f"v2:{same}", f"v1:{same}"]
    key, secret = make_key()
    assert key.secret_key_version == 2
    with connection.cursor() as cursor:
        cursor.execute("UPDATE keys_apikey SET secret_key_version = 1 WHERE id = %s", [key.pk])
    relabelled = ApiKey.objects.get(pk=key.pk)
    with pytest.raises(crypto.DecryptionError):
        relabelled.reveal_secret()


def test_a_different_master_key_fails_closed_instead_of_returning_ciphertext(settings, make_key):
    key, secret = make_key()
    settings.CONSOLE_ENCRYPTION_KEYS = [master_key(1)]
    stored = ApiKey.objects.get(pk=key.pk)
    with pytest.raises(crypto.DecryptionError) as excinfo:
        stored.reveal_secret()
    assert secret not in str(excinfo.value)


def test_a_missing_master_key_version_fails_with_unknown_key_version(settings, make_key):
    key, _ = make_key()
    settings.CONSOLE_ENCRYPTION_KEYS = [master_key(2)]
    with pytest.raises(crypto.UnknownKeyVersion, match="v1 is not configured"):
        ApiKey.objects.get(pk=key.pk).reveal_secret()


@pytest.mark.parametrize("ciphertext", [b"", None, b"\x00" * 12, b"\x01" * 27])
def test_empty_or_truncated_ciphertext_fails_to_decrypt(ciphertext):
    with pytest.raises(crypto.DecryptionError, match="missing or truncated"):
        crypto.decrypt(ciphertext, crypto.keyring().current, ROW)


def test_random_bytes_of_nonce_plus_tag_length_fail_to_decrypt():
    with pytest.raises(crypto.DecryptionError, match="failed authentication"):
        crypto.decrypt(os.urandom(28), crypto.keyring().current, ROW)


def test_a_ciphertext_cut_short_by_one_byte_fails_to_decrypt():
    ciphertext, version = crypto.encrypt(formats.generate(), ROW)
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(ciphertext[:-1], version, ROW)


def test_a_secret_without_a_key_version_fails_to_decrypt():
    ciphertext, _ = crypto.encrypt("x", ROW)
    with pytest.raises(crypto.DecryptionError, match="no encryption-key version"):
        crypto.decrypt(ciphertext, None, ROW)


SIXTEEN_BYTES = base64.urlsafe_b64encode(os.urandom(16)).decode()
GOOD_V1 = master_key(1)
GOOD_V2 = master_key(2)


@pytest.mark.parametrize(
    "entries, message",
    [
        ("", "is empty"),
        ([], "is empty"),
        (" , ", "is empty"),
        ("v1:not*base64*at*all", 'not of the form "v<N>:<base64 of 32 bytes>"'),
        ("secretkeywithoutversion", 'not of the form "v<N>:<base64 of 32 bytes>"'),
        ("v1:abcde", "not valid base64"),
        (f"v1:{SIXTEEN_BYTES}", "decodes to 16 bytes; AES-256 needs 32"),
        (f"{GOOD_V1},v1:{material(GOOD_V2)}", "lists version v1 twice"),
        (f"{GOOD_V1},{GOOD_V2}", "must list the newest (highest) version first"),
    ],
)
def test_keyring_errors_say_what_is_wrong_and_never_contain_key_material(entries, message):
    with pytest.raises(crypto.ConfigurationError) as excinfo:
        crypto.parse_keyring(entries)
    text = str(excinfo.value)
    assert message in text
    for entry in entries if isinstance(entries, list) else entries.split(","):
        body = entry.split(":", 1)[-1].strip()
        if len(body) >= 5:
            assert body not in text


def test_keyring_lists_every_version_and_writes_with_the_first():
    ring = crypto.parse_keyring(f"{GOOD_V2}, {GOOD_V1}")
    assert ring.current == 2
    assert set(ring.keys) == {1, 2}


def test_fingerprint_is_an_hmac_not_a_plain_hash_and_is_stable():
    secret = formats.generate()
    assert crypto.fingerprint(secret) == crypto.fingerprint(secret)
    assert crypto.fingerprint(secret) != hashlib.sha256(secret.encode()).hexdigest()
    assert len(crypto.fingerprint(secret)) == 64
    assert crypto.fingerprint(secret) != crypto.fingerprint(formats.generate())


def test_fingerprint_differs_under_another_fingerprint_key(settings):
    secret = formats.generate()
    before = crypto.fingerprint(secret)
    settings.CONSOLE_FINGERPRINT_KEY = crypto.generate_fingerprint_key()
    assert crypto.fingerprint(secret) != before


@pytest.mark.parametrize("value", ["", "too-short"])
def test_a_missing_or_short_fingerprint_key_is_a_configuration_error(settings, value):
    settings.CONSOLE_FINGERPRINT_KEY = value
    with pytest.raises(crypto.ConfigurationError, match="CONSOLE_FINGERPRINT_KEY"):
        crypto.fingerprint("anything")


def test_adding_a_new_master_key_writes_new_rows_with_it_and_old_rows_still_decrypt(settings, make_key):
    old = master_key(1)
    settings.CONSOLE_ENCRYPTION_KEYS = [old]
    old_key, old_secret = make_key()
    assert old_key.secret_key_version == 1

    settings.CONSOLE_ENCRYPTION_KEYS = [master_key(2), old]
    new_key, new_secret = make_key()
    assert new_key.secret_key_version == 2
    assert ApiKey.objects.get(pk=old_key.pk).reveal_secret() == old_secret
    assert ApiKey.objects.get(pk=new_key.pk).reveal_secret() == new_secret


def test_rewrap_moves_a_row_to_the_newest_key_and_keeps_its_secret(settings, make_key):
    old = master_key(1)
    settings.CONSOLE_ENCRYPTION_KEYS = [old]
    key, secret = make_key()
    new = master_key(2)
    settings.CONSOLE_ENCRYPTION_KEYS = [new, old]

    assert ApiKey.objects.get(pk=key.pk).rewrap() is True
    settings.CONSOLE_ENCRYPTION_KEYS = [new]
    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.secret_key_version == 2
    assert stored.reveal_secret() == secret
    assert stored.rewrap() is False


def test_the_plaintext_is_not_stored_anywhere_in_the_row(make_key):
    key, secret = make_key()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM keys_apikey WHERE id = %s", [key.pk])
        row = cursor.fetchone()
    for value in row:
        if isinstance(value, (bytes, memoryview)):
            assert secret.encode() not in bytes(value)
        else:
            assert secret not in str(value)
