"""Re-encrypting every secret under a new master key (keys/rewrap.py, rewrap_keys):
resumable after a kill, idempotent, reports rows it cannot decrypt by id."""

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from keys import crypto, formats
from keys.models import ApiKey

ROOT = Path(__file__).resolve().parent.parent
PROGRESS = re.compile(r"^Batch \d+: (\d+) rows rewrapped so far")


@pytest.fixture
def old_master(settings):
    """The only master key while the fixture keys are written: v1."""
    v1 = crypto.generate_master_key(1)
    settings.CONSOLE_ENCRYPTION_KEYS = [v1]
    return v1


@pytest.fixture
def new_master():
    return crypto.generate_master_key(2)


def create_keys(project, n):
    """n keys written under the current master key; {id: secret}, by id order."""
    keys, secrets = [], {}
    for i in range(n):
        secret = formats.generate()
        key = ApiKey(organization=project.organization, project=project, name=f"key {i}")
        key.set_secret(secret)
        keys.append(key)
        secrets[key.pk] = secret
    ApiKey.objects.bulk_create(keys)
    return dict(sorted(secrets.items()))


def versions():
    """Master-key version of every row, in primary-key order."""
    return list(ApiKey.objects.order_by("pk").values_list("secret_key_version", flat=True))


def assert_all_decrypt(secrets):
    for key in ApiKey.objects.all():
        assert key.reveal_secret() == secrets[key.pk]


def database_url_for_tests():
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def command_env(keys):
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url_for_tests(),
        "CONSOLE_ENCRYPTION_KEYS": keys,
    }


def rewrap_command(batch_size):
    return [sys.executable, "manage.py", "rewrap_keys", "--batch-size", str(batch_size)]


def read_lines(stream, lines):
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_killed_rewrap_loses_nothing_and_a_rerun_finishes_the_job(project, old_master, new_master, settings):
    secrets = create_keys(project, 200)
    ids = list(secrets)
    both = f"{new_master},{old_master}"

    # Hold a lock on row 100 (in id order): the command rewraps rows 0–99, reports each
    # batch, then waits on that row. We kill it there, mid-run, at a known place.
    with transaction.atomic():
        ApiKey.objects.select_for_update().filter(pk=ids[100]).get()
        process = subprocess.Popen(
            rewrap_command(batch_size=5),
            cwd=ROOT,
            env=command_env(both),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = queue.Queue()
        threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
        output = []
        while True:
            line = lines.get(timeout=120)  # a safety net against a hang, not a timing assertion
            assert line is not None, "rewrap_keys ended early:\n" + "".join(output) + process.stderr.read()
            output.append(line)
            match = PROGRESS.match(line)
            if match and int(match[1]) >= 100:
                break
        process.send_signal(signal.SIGKILL)
        process.wait()
    process.stdout.close()
    process.stderr.close()

    assert "Before: v1: 200 rows\n" in output
    settings.CONSOLE_ENCRYPTION_KEYS = [new_master, old_master]
    after_kill = versions()
    assert set(after_kill[:100]) == {2}
    assert set(after_kill[101:]) == {1}  # row 100 itself may have been written as the lock was released
    assert_all_decrypt(secrets)

    rerun = subprocess.run(
        rewrap_command(batch_size=5), cwd=ROOT, env=command_env(both), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    before_line = next(line for line in rerun.stdout.splitlines() if line.startswith("Before:"))
    assert re.fullmatch(r"Before: v1: (99|100) rows, v2: (100|101) rows", before_line)
    assert "After: v2: 200 rows" in rerun.stdout
    assert set(versions()) == {2}
    assert_all_decrypt(secrets)

    # The old master key can go now.
    settings.CONSOLE_ENCRYPTION_KEYS = [new_master]
    assert_all_decrypt(secrets)
    ciphertexts = dict(ApiKey.objects.values_list("pk", "secret_ciphertext"))

    again = subprocess.run(
        rewrap_command(batch_size=5), cwd=ROOT, env=command_env(new_master), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert "Before: v2: 200 rows" in again.stdout
    assert "Done: 0 rows rewrapped" in again.stdout
    assert "After: v2: 200 rows" in again.stdout
    assert {pk: bytes(c) for pk, c in ApiKey.objects.values_list("pk", "secret_ciphertext")} == {
        pk: bytes(c) for pk, c in ciphertexts.items()
    }
    for secret in secrets.values():
        assert secret not in rerun.stdout + rerun.stderr + again.stdout + again.stderr + "".join(output)


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("rewrap_keys", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_rows_that_fail_to_decrypt_are_reported_by_id_and_the_rest_are_rewrapped(
    project, old_master, new_master, settings
):
    secrets = create_keys(project, 12)
    broken, unknown = list(secrets)[3], list(secrets)[8]
    with connection.cursor() as cursor:
        cursor.execute("UPDATE keys_apikey SET secret_ciphertext = %s WHERE id = %s", [os.urandom(60), broken])
        cursor.execute("UPDATE keys_apikey SET secret_key_version = 7 WHERE id = %s", [unknown])
    settings.CONSOLE_ENCRYPTION_KEYS = [new_master, old_master]
    out, err = io.StringIO(), io.StringIO()

    with pytest.raises(CommandError) as excinfo:
        call_command("rewrap_keys", "--batch-size", "5", stdout=out, stderr=err)

    assert excinfo.value.returncode != 0
    assert "2 row(s) could not be decrypted" in str(excinfo.value)
    assert f"Key {broken}: cannot be decrypted" in err.getvalue()
    assert f"Key {unknown}: cannot be decrypted" in err.getvalue()
    assert "Before: v1: 11 rows, v7: 1 row" in out.getvalue()
    assert "After: v1: 1 row, v2: 10 rows, v7: 1 row" in out.getvalue()
    for pk, secret in secrets.items():
        if pk not in (broken, unknown):
            assert ApiKey.objects.get(pk=pk).reveal_secret() == secret
        assert secret not in out.getvalue() + err.getvalue() + str(excinfo.value)


def test_a_dry_run_decrypts_and_counts_but_writes_nothing(project, old_master, new_master, settings):
    create_keys(project, 7)
    settings.CONSOLE_ENCRYPTION_KEYS = [new_master, old_master]
    out, _ = run("--dry-run", "--batch-size", "3")
    assert "Done: 7 rows would be rewrapped" in out
    assert "After: v1: 7 rows" in out
    assert set(versions()) == {1}


def test_rewrap_reads_in_keyset_batches_and_writes_each_row_once(
    project, old_master, new_master, settings, django_assert_num_queries
):
    create_keys(project, 12)
    settings.CONSOLE_ENCRYPTION_KEYS = [new_master, old_master]
    # 2 count queries, 3 full batches + 1 empty read, 12 single-row updates.
    with django_assert_num_queries(2 + 4 + 12) as captured:
        out, _ = run("--batch-size", "5")
    reads = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("SELECT") and "LIMIT 5" in q["sql"]]
    assert not any("OFFSET" in sql for sql in reads)
    assert sum('"keys_apikey"."id" >' in sql for sql in reads) == 3
    assert out.count("Batch ") == 3
    assert "After: v2: 12 rows" in out


def test_rewrap_with_nothing_to_do_changes_nothing(project, old_master):
    create_keys(project, 3)
    out, _ = run()
    assert "Before: v1: 3 rows" in out
    assert "Done: 0 rows rewrapped" in out


def test_rewrap_refuses_a_broken_keyring_and_changes_nothing(project, old_master, settings):
    create_keys(project, 2)
    settings.CONSOLE_ENCRYPTION_KEYS = [old_master, crypto.generate_master_key(2)]
    with pytest.raises(CommandError, match="must list the newest .* first.*Nothing was changed"):
        run()
    assert set(versions()) == {1}


def test_rewrap_refuses_a_batch_size_below_one(db):
    with pytest.raises(CommandError, match="--batch-size must be 1 or more"):
        run("--batch-size", "0")


def test_describe_counts_reads_like_the_output():
    from keys.rewrap import describe

    assert describe({1: 120, 2: 3}) == "v1: 120 rows, v2: 3 rows"
    assert describe({2: 1}) == "v2: 1 row"
    assert describe({}) == "no keys"
