"""docs/DEPLOY.md and the systemd unit examples stay true to the code they describe."""

import configparser
import re
from pathlib import Path

import pytest

from console.celery import app

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
DEPLOY = (ROOT / "docs" / "DEPLOY.md").read_text()
HARDENING = {
    "NoNewPrivileges": "true",
    "PrivateTmp": "true",
    "ProtectSystem": "strict",
    "ProtectHome": "true",
    "CapabilityBoundingSet": "",
    "UMask": "0077",
}


def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((UNITS / name).read_text().replace("\\\n", " "))
    return parser


def scheduled_tasks():
    app.loader.import_default_modules()
    app.on_after_configure.send(sender=app)  # console/celery.py's add_periodic_tasks
    return {entry["task"] for entry in app.conf.beat_schedule.values()}


def test_every_scheduled_task_is_in_the_two_beats_table():
    tasks = scheduled_tasks()
    assert "keys.tasks.sweep" in tasks and len(tasks) >= 9
    table = DEPLOY.split("**If two beats start**", 1)[1].split("## 8.", 1)[0]
    for task in tasks:
        assert f"`{task}`" in table, f"docs/DEPLOY.md says nothing about {task} under two beats"


@pytest.mark.parametrize("name", ["console-web.service", "console-worker@.service", "console-beat.service"])
def test_each_unit_runs_unprivileged_hardened_and_reads_the_env_file(name):
    service = unit(name)["Service"]
    assert service["User"] == "console" and service["Group"] == "console"
    assert service["Environment"] == "CONSOLE_ENV_FILE=/etc/console/env"
    for option, value in HARDENING.items():
        assert service[option].strip() == value, (name, option)
    assert "SECRET" not in (UNITS / name).read_text()  # settings stay in the env file
    assert f"deploy/systemd/{name}" in DEPLOY or f"`{name}`" in DEPLOY


def test_the_units_run_gunicorn_workers_with_their_own_node_names_and_one_beat():
    web = unit("console-web.service")["Service"]["ExecStart"]
    assert re.search(r"/gunicorn console\.wsgi .*--bind 127\.0\.0\.1:", web)
    worker = unit("console-worker@.service")["Service"]
    assert re.search(r"/celery -A console worker .*-n %i@%H", worker["ExecStart"])
    assert worker["KillMode"] == "mixed"
    assert int(worker["TimeoutStopSec"]) > 600  # longer than CELERY_TASK_TIME_LIMIT's default
    beat = unit("console-beat.service")["Service"]
    assert re.search(r"/celery -A console beat .*--schedule /var/lib/console/", beat["ExecStart"])
    assert beat["StateDirectory"] == "console"
    assert sorted(p.name for p in UNITS.iterdir()) == [
        "console-beat.service",
        "console-web.service",
        "console-worker@.service",
    ]
