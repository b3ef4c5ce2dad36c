"""Benchmark: the rotation report at 50,000 keys (keys/report.py).

    python -m bench.rotation_report --keys 50000

Seeds a fresh PostgreSQL database (console_bench_rotreport): one organization, projects of
100 keys each in assorted environments, N keys issued over the past 400 days (a third
rotated, with a ROTATED KeyEvent each, 1 in 50 revoked with a REVOKED event, 1 in 200
leaked), 3 probe results per key and one usage bucket per key used. Then times, each the
median of 3 runs, with its SQL query count: the report built now and as of 60 days ago;
the admin page (now, as of, filtered); the CSV download; `manage.py rotation_report` as
CSV and as a table.
"""

import argparse
import base64
import io
import os
import secrets
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--database", default="console_bench_rotreport")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    os.environ["CONSOLE_ENV_FILE"] = os.devnull
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ["REDIS_URL"] = ""
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_hex(24))
    os.environ.setdefault("CONSOLE_ENCRYPTION_KEYS", "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode())
    os.environ.setdefault("CONSOLE_FINGERPRINT_KEY", secrets.token_urlsafe(32))
    from bench.probe_sweep import create_database

    create_database(args.database)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"
    settings.WHITENOISE_AUTOREFRESH = True
    call_command("migrate", verbosity=0)
    started = time.monotonic()
    world = seed(args.keys)
    print(f"seeded {args.keys} keys with history in {time.monotonic() - started:.0f} s")
    print()
    measure(world, args.runs)


def seed(n):
    from datetime import timedelta

    from django.contrib.auth.models import User
    from django.db import connection, transaction
    from django.utils import timezone

    from accounts.models import Environment, Organization, Project, Tier
    from console.upstream import Outcome
    from keys import formats
    from keys.models import ApiKey, KeyAction, KeyEvent, ProbeResult
    from usage.models import UsageBucket

    now = timezone.now()
    tier = Tier.objects.get(name="Tier 2")
    org = Organization.objects.create(name="Bench", slug="bench", openai_org_id="org-Bench0000001")
    environments = Environment.values
    projects = Project.objects.bulk_create(
        Project(
            organization=org,
            name=f"project {i:04d}",
            openai_project_id=f"proj_bench{i:06d}",
            tier=tier,
            environment=environments[i % len(environments)],
            rotation_policy_days=30 if i % 5 == 0 else None,
        )
        for i in range((n + 99) // 100)
    )
    outcomes = [Outcome.OK] * 7 + [Outcome.INVALID_KEY, Outcome.TIMEOUT, Outcome.RATE_LIMITED]
    keys, events, results, buckets = [], [], [], []
    for i in range(n):
        key = ApiKey(
            organization=org,
            project=projects[i // 100],
            name=f"k{i:06d}",
            owner=f"team {i % 37}",
            issued_at=now - timedelta(days=i % 400, hours=i % 24),
            rotated_at=now - timedelta(days=i % 70) if i % 3 == 0 else None,
            rotated_by="bench" if i % 3 == 0 else "",
            revoked_at=now - timedelta(days=i % 10) if i % 50 == 0 else None,
            leaked_at=now - timedelta(days=i % 20) if i % 200 == 0 else None,
            last_used_at=now - timedelta(days=i % 60) if i % 4 else None,
            last_probe_at=now,
            last_probe_outcome=outcomes[i % len(outcomes)],
            consecutive_failures=(i % 5) if outcomes[i % len(outcomes)] in Outcome.failures() else 0,
        )
        key.set_secret(formats.generate())
        keys.append(key)
        if key.rotated_at:
            events.append(KeyEvent(key=key, at=key.rotated_at, action=KeyAction.ROTATED, actor_label="bench"))
        if key.revoked_at:
            events.append(KeyEvent(key=key, at=key.revoked_at, action=KeyAction.REVOKED, actor_label="bench"))
        for h in range(3):
            results.append(
                ProbeResult(key=key, slot=h, started_at=now - timedelta(days=h * 30), outcome=key.last_probe_outcome)
            )
        if key.last_used_at:
            end = key.last_used_at.replace(hour=0, minute=0, second=0, microsecond=0)
            buckets.append(
                UsageBucket(
                    organization=org,
                    project=key.project,
                    key=key,
                    endpoint="completions",
                    start_time=end - timedelta(days=1),
                    end_time=end,
                    upstream_key_id=f"key_{i:012d}",
                    model="gpt-4o-mini",
                    num_model_requests=1 + i % 9,
                )
            )
    with transaction.atomic():
        ApiKey.objects.bulk_create(keys, batch_size=2000)
        KeyEvent.objects.bulk_create(events, batch_size=5000)
        ProbeResult.objects.bulk_create(results, batch_size=5000)
        UsageBucket.objects.bulk_create(buckets, batch_size=5000)
    reviewer = User.objects.create_user("reviewer", "r@example.com", secrets.token_urlsafe(16), is_staff=True)
    from django.contrib.auth.models import Group

    reviewer.groups.add(Group.objects.get(name="Security reviewers"))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {"reviewer": reviewer, "now": now}


def timed(runs, fn):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    timings = []
    for _ in range(runs):
        with CaptureQueriesContext(connection) as queries:
            started = time.monotonic()
            value = fn()
            timings.append(time.monotonic() - started)
    return statistics.median(timings), len(queries), value


def measure(world, runs):
    from datetime import timedelta

    from django.core.management import call_command
    from django.test import Client

    from keys import report

    now = world["now"]
    past = now - timedelta(days=60)
    client = Client()
    client.force_login(world["reviewer"])
    as_of = past.strftime("%Y-%m-%d")

    def page(params):
        def get():
            response = client.get("/admin/keys/apikey/rotation-report/", params)
            assert response.status_code == 200, response.status_code
            # The downloads stream (keys/report_views.py): read them to their end.
            if response.streaming:
                return len(b"".join(response.streaming_content))
            return len(response.content)

        return get

    def command(*argv):
        def run():
            out = io.StringIO()
            call_command("rotation_report", *argv, stdout=out)
            return len(out.getvalue())

        return run

    cases = [
        ("report.build(), now", lambda: len(report.build(now=now).rows)),
        ("report.build(), as of 60 days ago", lambda: len(report.build(now=now, as_of=past).rows)),
        ("report.build(), now, state=overdue", lambda: len(report.build(report.Filters(state="overdue")).rows)),
        ("admin page, now", page({})),
        ("admin page, as of 60 days ago", page({"as_of": as_of})),
        ("admin page, flag=failing", page({"flag": "failing"})),
        ("CSV download, now", page({"format": "csv"})),
        ("CSV download, as of", page({"format": "csv", "as_of": as_of})),
        ("rotation_report --format csv", command("--format", "csv")),
        ("rotation_report (table)", command()),
        ("rotation_report --as-of --format json", command("--as-of", as_of, "--format", "json")),
    ]
    print(f"{'what':40} {'median':>9} {'queries':>8} {'rows/bytes':>11}")
    for label, fn in cases:
        seconds, queries, value = timed(runs, fn)
        print(f"{label:40} {seconds:7.2f} s {queries:8} {value:11}")


if __name__ == "__main__":
    main()
