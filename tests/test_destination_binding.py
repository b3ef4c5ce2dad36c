"""A secret goes only where it was registered to go.

The destination (provider, base URL, Azure endpoint) is bound into the ciphertext's
associated data: a destination changed behind the console's back — in SQL, in a restore,
by a bug — makes the secret undecryptable, so it is never sent anywhere. Changing it in
the admin requires pasting the secret again, and is audited with the old and new value.

The exfiltration tests point keys at a listener on a loopback port and count what
reaches it: nothing may.
"""

import socket
import threading

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent
from console.upstream import Outcome
from keys import crypto, formats, probe
from keys.models import ApiKey, Provider

from .test_admin import key_change_data


class Listener:
    """A TCP listener on a loopback port that counts connections and keeps what they send."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = b""
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def serve(self):
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.settimeout(0.5)
            try:
                self.received += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 28\r\n\r\n")
                conn.sendall(b'{"object":"list","data":[]}\n')
            except OSError:
                pass
            finally:
                conn.close()

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def write_in_sql(key, **columns):
    """Change a key's row behind the console's back."""
    sets = ", ".join(f"{name} = %s" for name in columns)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE keys_apikey SET {sets} WHERE id = %s", [*columns.values(), key.pk.hex])


def probe_now(key):
    return probe.run_batch([(str(key.pk), int(timezone.now().timestamp()))])


def test_the_secret_decrypts_only_for_the_destination_it_was_encrypted_for(make_key):
    key, secret = make_key()
    assert key.reveal_secret() == secret
    key.base_url = "https://gateway.example.com/v1"
    with pytest.raises(crypto.DecryptionError):
        key.reveal_secret()


@pytest.mark.parametrize("field", ["base_url", "provider"])
def test_a_destination_changed_in_sql_makes_the_secret_undecryptable(make_key, field):
    key, _ = make_key()
    write_in_sql(key, **{field: "http://127.0.0.1:9/v1" if field == "base_url" else Provider.AZURE})
    key.refresh_from_db()
    with pytest.raises(crypto.DecryptionError):
        key.reveal_secret()


def test_an_openai_key_pointed_at_a_listener_in_sql_sends_it_nothing(make_key, listener):
    key, secret = make_key()
    write_in_sql(key, base_url=f"{listener.url}/v1")
    summary = probe_now(key)
    assert listener.connections == 0
    assert secret.encode() not in listener.received
    assert summary.outcomes == {Outcome.DECRYPTION_FAILED: 1}
    assert key.probe_results.get().outcome == Outcome.DECRYPTION_FAILED


def test_an_azure_key_pointed_at_a_listener_in_sql_sends_it_nothing(make_key, listener):
    key, secret = make_key(formats.AZURE, provider=Provider.AZURE)
    write_in_sql(key, azure_endpoint=listener.url)
    probe_now(key)
    assert listener.connections == 0
    assert key.probe_results.get().outcome == Outcome.DECRYPTION_FAILED


def test_changing_the_base_url_in_the_admin_without_the_secret_is_refused(admin_client, make_key, listener):
    key, _ = make_key()
    url = reverse("admin:keys_apikey_change", args=[key.pk])
    response = admin_client.post(url, key_change_data(key, base_url=f"{listener.url}/v1"))
    assert response.status_code == 200
    assert "requires pasting its secret again" in response.content.decode()
    key.refresh_from_db()
    assert key.base_url == ""
    assert not AuditEvent.objects.filter(action="key.updated").exists()
    probe_now(key)
    assert listener.connections == 0


def test_changing_the_azure_endpoint_without_the_secret_is_refused(admin_client, make_key):
    key, _ = make_key(formats.AZURE, provider=Provider.AZURE)
    url = reverse("admin:keys_apikey_change", args=[key.pk])
    data = key_change_data(key, azure_endpoint="https://other-resource.openai.azure.com")
    response = admin_client.post(url, data)
    assert "requires pasting its secret again" in response.content.decode()
    key.refresh_from_db()
    assert key.azure_endpoint == "https://example-resource.openai.azure.com"


def test_a_new_destination_with_the_secret_pasted_again_is_saved_and_audited_old_and_new(admin_client, make_key):
    key, secret = make_key(formats.AZURE, provider=Provider.AZURE)
    old = key.azure_endpoint
    new = "https://other-resource.openai.azure.com"
    url = reverse("admin:keys_apikey_change", args=[key.pk])
    response = admin_client.post(url, key_change_data(key, secret=secret, azure_endpoint=new))
    assert response.status_code == 302, response.content.decode()[:2000]
    key.refresh_from_db()
    assert key.azure_endpoint == new
    assert key.reveal_secret() == secret
    event = AuditEvent.objects.get(action="key.updated", target_id=str(key.pk))
    assert event.details["changes"]["azure_endpoint"] == {"old": old, "new": new}
    assert AuditEvent.objects.filter(action="key.secret_replaced", target_id=str(key.pk)).exists()
    assert secret not in str(event.details)


def test_rewrapping_keeps_the_destination_bound(make_key, settings):
    key, secret = make_key()
    newer = crypto.generate_master_key(version=9)
    settings.CONSOLE_ENCRYPTION_KEYS = [newer, *settings.CONSOLE_ENCRYPTION_KEYS]
    assert key.rewrap() is True
    key.refresh_from_db()
    assert key.secret_key_version == 9
    assert key.reveal_secret() == secret
    key.base_url = "https://gateway.example.com/v1"
    with pytest.raises(crypto.DecryptionError):
        key.reveal_secret()


def test_the_migration_rebinds_secrets_written_before_destinations_were_bound(make_key):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("keys.migrations.0006_bind_destination")
    key, secret = make_key(base_url="")
    # Rewrite the row as the console before this migration stored it.
    ring = crypto.keyring()
    nonce = b"\x00" * 12
    body = ring.aead(ring.current).encrypt(nonce, secret.encode(), migration.old_associated_data(key.pk, ring.current))
    ApiKey.objects.filter(pk=key.pk).update(secret_ciphertext=nonce + body)
    key.refresh_from_db()
    with pytest.raises(crypto.DecryptionError):
        key.reveal_secret()
    migration.rebind(apps, None)
    migration.rebind(apps, None)  # a second run changes nothing
    key.refresh_from_db()
    assert key.reveal_secret() == secret


@pytest.mark.parametrize(
    "field, value",
    [
        ("base_url", "LISTENER/v1"),
        ("base_url", "http://169.254.169.254/"),
        ("base_url", "http://10.0.0.1/"),
        ("base_url", "http://127.0.0.1:6379/"),
        ("base_url", "https://user:pass@api.openai.com/v1"),
        ("base_url", "https://\u202egnp.exe/v1"),
        ("azure_endpoint", "LISTENER"),
        ("azure_endpoint", "https://resource.openai.azure.com.attacker.test"),
    ],
)
def test_even_with_the_secret_pasted_again_a_key_cannot_be_pointed_off_the_allow_list(
    admin_client, make_key, listener, field, value
):
    fmt, provider = (formats.AZURE, Provider.AZURE) if field == "azure_endpoint" else (formats.PROJECT, "openai")
    key, secret = make_key(fmt, provider=provider)
    before = (key.base_url, key.azure_endpoint, bytes(key.secret_ciphertext))
    value = value.replace("LISTENER", listener.url)
    url = reverse("admin:keys_apikey_change", args=[key.pk])
    response = admin_client.post(url, key_change_data(key, secret=secret, **{field: value}))
    assert response.status_code == 200
    assert "CONSOLE_ALLOWED_API_HOSTS" in response.content.decode() or "refused" in response.content.decode()
    key.refresh_from_db()
    assert (key.base_url, key.azure_endpoint, bytes(key.secret_ciphertext)) == before
    probe_now(key)
    assert listener.connections == 0


def test_the_upstream_door_refuses_a_destination_taken_off_the_allow_list(make_key, listener, settings):
    """Defence in depth: the row is intact and decrypts, but its host is no longer allowed
    (an operator removed it): nothing is sent, and an API outage is not what it looks like."""
    from keys.models import Circuit

    settings.CONSOLE_ALLOWED_API_HOSTS = [*settings.CONSOLE_ALLOWED_API_HOSTS, f"127.0.0.1:{listener.port}"]
    key, secret = make_key(base_url=f"{listener.url}/v1")
    settings.CONSOLE_ALLOWED_API_HOSTS = settings.CONSOLE_ALLOWED_API_HOSTS[:-1]
    assert key.reveal_secret() == secret

    summary = probe_now(key)

    assert listener.connections == 0
    assert summary.outcomes == {Outcome.DESTINATION_REFUSED: 1}
    result = key.probe_results.get()
    assert result.message.startswith("Not sent:") and "CONSOLE_ALLOWED_API_HOSTS" in result.message
    assert not Circuit.objects.filter(host=f"127.0.0.1:{listener.port}", consecutive_failures__gt=0).exists()


def test_a_listed_destination_is_reached(make_key, listener, settings):
    """The positive control for the test above: the same key, allowed, reaches the listener."""
    settings.CONSOLE_ALLOWED_API_HOSTS = [*settings.CONSOLE_ALLOWED_API_HOSTS, f"127.0.0.1:{listener.port}"]
    key, secret = make_key(base_url=f"{listener.url}/v1")
    probe_now(key)
    assert listener.connections >= 1
