"""Benchmark: admin pages, the inventory command and the sweep's claim at 50,000 keys.

    python -m bench.admin_pages --keys 50000 --results-per-key 10

Seeds a fresh PostgreSQL database (console_bench_admin): one organization, projects of
100 keys each, N keys with assorted probe states, results-per-key probe results each and
one audit event per key. Then renders each main admin page as a superuser (Django's test
client, no network) and prints the median time of 3 renders and the number of SQL
queries; times `list_keys --format json` and a sweep claim of every key.
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
    parser.add_argument("--results-per-key", type=int, default=10)
    parser.add_argument("--database", default="console_bench_admin")
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
    settings.WHITENOISE_AUTOREFRESH = True  # no collectstatic needed for the benchmark
    call_command("migrate", verbosity=0)
    started = time.monotonic()
    world = seed(args)
    seeded = time.monotonic() - started
    print(f"seeded {args.keys} keys, {args.keys * args.results_per_key} probe results in {seeded:.0f} s")
    print()
    measure_pages(world)
    print()
    measure_commands()


def seed(args):
    from datetime import timedelta

    from django.contrib.auth.models import User
    from django.db import connection, transaction
    from django.utils import timezone

    from accounts.models import AuditEvent, Organization, Project, Tier
    from console.upstream import Outcome
    from keys import formats
    from keys.models import ApiKey, ProbeResult

    now = timezone.now()
    tier = Tier.objects.get(name="Tier 2")
    org = Organization.objects.create(name="Bench", slug="bench", openai_org_id="org-Bench0000001")
    projects = Project.objects.bulk_create(
        Project(organization=org, name=f"project {i:04d}", openai_project_id=f"proj_bench{i:06d}", tier=tier)
        for i in range((args.keys + 99) // 100)
    )
    outcomes = [Outcome.OK] * 8 + [Outcome.INVALID_KEY, Outcome.RATE_LIMITED]
    keys = []
    for i in range(args.keys):
        secret = formats.generate()
        key = ApiKey(
            organization=org,
            project=projects[i // 100],
            name=f"k{i:06d}",
            owner=f"team {i % 37}",
            issued_at=now - timedelta(days=i % 400),
            revoked_at=now if i % 50 == 0 else None,
            last_probe_at=now,
            last_probe_outcome=outcomes[i % len(outcomes)],
            next_probe_at=now - timedelta(minutes=1),
        )
        key.set_secret(secret)
        keys.append(key)
    with transaction.atomic():
        ApiKey.objects.bulk_create(keys, batch_size=2000)
    batch = []
    for key in keys:
        for n in range(args.results_per_key):
            batch.append(
                ProbeResult(
                    key=key,
                    slot=n,
                    started_at=now - timedelta(hours=n),
                    outcome=key.last_probe_outcome,
                    http_status=200,
                    request_id="req_" + secrets.token_hex(16),
                )
            )
        if len(batch) >= 20_000:
            ProbeResult.objects.bulk_create(batch)
            batch = []
    ProbeResult.objects.bulk_create(batch)
    admin = User.objects.create_superuser("bench", "bench@example.com", secrets.token_urlsafe(16))
    AuditEvent.objects.bulk_create(
        AuditEvent(
            actor=admin,
            actor_label="bench",
            action="key.created",
            target_type="apikey",
            target_id=str(k.pk),
            target_repr=str(k),
            details={"hint": k.hint},
        )
        for k in keys
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {"admin": admin, "org": org, "project": projects[0], "key": keys[1]}


def measure_pages(world):
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(world["admin"])
    pages = [
        ("dashboard (admin index)", "/admin/"),
        ("key list", "/admin/keys/apikey/"),
        ("key list, search", "/admin/keys/apikey/?q=k049"),
        ("key list, failing", "/admin/keys/apikey/?probe=failing"),
        ("key list, revoked", "/admin/keys/apikey/?status=revoked"),
        ("key list, by organization", f"/admin/keys/apikey/?organization__id__exact={world['org'].pk}"),
        ("key list, sorted by last probe", "/admin/keys/apikey/?o=4"),
        ("key list, sorted by issued / rotated", "/admin/keys/apikey/?o=5"),
        ("key list, expired", "/admin/keys/apikey/?status=expired"),
        ("key list, rotation overdue", "/admin/keys/apikey/?rotation=overdue"),
        ("key list, tier mismatch", "/admin/keys/apikey/?tier_mismatch=yes"),
        ("key list, project over budget", "/admin/keys/apikey/?budget_state=over"),
        ("key change page", f"/admin/keys/apikey/{world['key'].pk}/change/"),
        ("project list", "/admin/accounts/project/"),
        ("project change page (100 keys inline)", f"/admin/accounts/project/{world['project'].pk}/change/"),
        ("organization list", "/admin/accounts/organization/"),
        ("organization change page", f"/admin/accounts/organization/{world['org'].pk}/change/"),
        ("probe result list", "/admin/keys/proberesult/"),
        ("probe result list, outcome", "/admin/keys/proberesult/?outcome__exact=invalid_key"),
        ("audit log", "/admin/accounts/auditevent/"),
        ("audit log, search", "/admin/accounts/auditevent/?q=k04"),
    ]
    print(f"{'page':42} {'median':>8} {'queries':>8}")
    for label, url in pages:
        timings = []
        for _ in range(3):
            with CaptureQueriesContext(connection) as queries:
                started = time.monotonic()
                response = client.get(url)
                timings.append(time.monotonic() - started)
            assert response.status_code == 200, (url, response.status_code)
        print(f"{label:42} {statistics.median(timings) * 1000:6.0f} ms {len(queries):8}")


def measure_commands():
    from django.core.management import call_command
    from django.utils import timezone

    from keys import sweep

    started = time.monotonic()
    call_command("list_keys", "--format", "json", stdout=io.StringIO())
    print(f"list_keys --format json (all keys)        {time.monotonic() - started:6.2f} s")
    started = time.monotonic()
    claims = sweep.claim_due(timezone.now())
    print(f"sweep claim of every due key ({len(claims)})     {time.monotonic() - started:6.2f} s")


if __name__ == "__main__":
    main()
