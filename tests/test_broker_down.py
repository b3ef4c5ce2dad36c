"""Saving a key never fails because no worker queue answers.

On a fresh clone there is no `var/broker/` yet; in production Redis may be down. Either
way the key is saved, the command exits 0 and says the first probe comes with the next
sweep, and the key is left due (not leased), so the next sweep probes it.
"""

import os
import subprocess
import sys

import pytest
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError

from keys import formats
from keys.models import ApiKey

from .workers import ROOT, worker_env

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

BROKERS_DOWN = {
    "fresh clone (no var/broker)": lambda tmp: {"REDIS_URL": "", "CELERY_BROKER_DIR": str(tmp / "no" / "broker")},
    "redis down": lambda tmp: {"REDIS_URL": "redis://127.0.0.1:1/0"},
}


def manage(*args, env, secret):
    environment = worker_env(**env)
    environment["CONSOLE_NEW_KEY"] = secret
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def assert_due_not_leased(key):
    assert key.next_probe_at is not None
    assert key.next_probe_at <= timezone.now()


@pytest.mark.parametrize("broker", list(BROKERS_DOWN))
def test_add_key_with_no_broker_saves_the_key_exits_0_and_leaves_it_due(project, tmp_path, broker):
    secret = formats.generate()
    done = manage(
        "add_key",
        "--org",
        "acme",
        "--project",
        "Chatbot",
        "--name",
        "fresh",
        env=BROKERS_DOWN[broker](tmp_path),
        secret=secret,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "first probe will come with the next sweep" in done.stdout
    assert secret not in done.stdout + done.stderr
    key = ApiKey.objects.get(name="fresh")
    assert key.reveal_secret() == secret
    assert_due_not_leased(key)
    assert ApiKey.objects.due_for_probe(timezone.now()).filter(pk=key.pk).exists()


def test_load_demo_with_no_broker_loads_everything_and_says_so(db, tmp_path):
    done = manage("load_demo", "--no-sandbox", env=BROKERS_DOWN["fresh clone (no var/broker)"](tmp_path), secret="")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "next sweep" in done.stdout
    live = ApiKey.objects.active()
    assert live.count() == 11
    assert all(k.next_probe_at <= timezone.now() for k in live)


def test_probe_now_in_the_admin_with_no_broker_says_the_next_sweep_will_probe(admin_client, make_key, monkeypatch):
    from keys import tasks

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(tasks.probe_batch, "apply_async", broker_down)
    key, _ = make_key()
    response = admin_client.post(
        reverse("admin:keys_apikey_changelist"), {"action": "probe_selected", "_selected_action": [key.pk]}, follow=True
    )
    text = response.content.decode()
    assert "No worker queue answered" in text and "next sweep" in text
    key.refresh_from_db()
    assert_due_not_leased(key)


def test_saving_a_key_in_the_admin_with_no_broker_warns_and_leaves_it_due(admin_client, project, monkeypatch):
    from keys import tasks

    from .test_admin import ADD_KEY, key_data

    def broker_down(*args, **kwargs):
        raise OperationalError("Connection refused.")

    monkeypatch.setattr(tasks.probe_batch, "apply_async", broker_down)
    secret = formats.generate()
    response = admin_client.post(
        ADD_KEY, key_data(secret, organization=project.organization_id, project=project.pk), follow=True
    )
    assert response.status_code == 200
    assert "No worker queue answered" in response.content.decode()
    assert_due_not_leased(ApiKey.objects.get())


def test_the_subprocess_uses_the_test_database(project):
    """Guard for the tests above: the subprocess sees what this test committed."""
    env = worker_env(REDIS_URL="")
    script = "import django; django.setup()\nfrom accounts.models import Project\nprint(Project.objects.count())"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "1", done.stderr[-2000:]
    assert os.environ.get("DJANGO_SETTINGS_MODULE") == "tests.settings"


def test_the_filesystem_broker_keeps_everything_under_its_folder(project, make_key, tmp_path):
    """The `make run` broker: publishing works and writes nothing into the working directory
    (kombu's default control folder is ./control)."""
    key, _ = make_key()
    broker = tmp_path / "broker"
    for folder in ("out", "processed"):
        (broker / folder).mkdir(parents=True)
    script = (
        f"import django; django.setup()\nfrom keys import tasks\nprint('queued', tasks.enqueue_probes(['{key.pk}']))"
    )
    env = worker_env(REDIS_URL="", CELERY_BROKER_DIR=str(broker), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "queued 1" in done.stdout, done.stderr[-2000:]
    assert list((broker / "out").iterdir())
    assert (broker / "control").is_dir()
    assert not (tmp_path / "control").exists()
