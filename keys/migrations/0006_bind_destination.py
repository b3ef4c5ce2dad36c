"""Bind each stored secret to its destination.

Secrets were encrypted with the row id and master-key version as associated data; from
now on the destination (provider, base URL, Azure endpoint) is bound too (keys/crypto.py,
ApiKey.destination_binding). This re-encrypts every row from the old associated data to
the new one, with the configured master keys. A row that does not decrypt under the old
format stops the migration with its id: nothing is guessed, nothing is left half-done
(each row is its own compare-and-swap update, and rows already bound are skipped, so the
migration can simply be run again).
"""

from cryptography.exceptions import InvalidTag
from django.db import migrations

DESTINATION_FIELDS = ("provider", "base_url", "azure_endpoint")
NONCE_BYTES = 12


def old_associated_data(row_id, version):
    return f"console.apikey:{row_id}:v{version}".encode()


def rebind(apps, schema_editor):
    from keys import crypto

    ApiKey = apps.get_model("keys", "ApiKey")
    rows = ApiKey.objects.order_by("pk").only("pk", "secret_ciphertext", "secret_key_version", *DESTINATION_FIELDS)
    if not rows.exists():
        return
    ring = crypto.keyring()
    for row in rows.iterator(chunk_size=500):
        data = bytes(row.secret_ciphertext)
        binding = "|".join(str(getattr(row, name) or "") for name in DESTINATION_FIELDS)
        try:
            crypto.decrypt(data, row.secret_key_version, row.pk, ring=ring, binding=binding)
            continue  # already bound: an earlier run got this far
        except crypto.DecryptionError:
            pass
        try:
            plain = (
                ring.aead(row.secret_key_version)
                .decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], old_associated_data(row.pk, row.secret_key_version))
                .decode()
            )
        except InvalidTag:
            raise RuntimeError(
                f"API key {row.pk} does not decrypt with the configured CONSOLE_ENCRYPTION_KEYS; "
                "configure the keys it was written with and run migrate again."
            ) from None
        ciphertext, version = crypto.encrypt(plain, row.pk, ring=ring, binding=binding)
        ApiKey.objects.filter(pk=row.pk, secret_ciphertext=row.secret_ciphertext).update(
            secret_ciphertext=ciphertext, secret_key_version=version
        )


class Migration(migrations.Migration):
    dependencies = [
        ("keys", "0005_proberesult_recent_index"),
    ]

    operations = [
        migrations.AlterModelOptions(name="apikey", options={"verbose_name": "API key"}),
        migrations.AlterModelOptions(name="proberesult", options={}),
        migrations.RunPython(rebind, migrations.RunPython.noop, elidable=False),
    ]
