"""Benchmark: the REST API at 50,000 keys.

    python -m bench.api --keys 50000

Seeds a fresh PostgreSQL database (console_bench_api) as bench/admin_pages.py does (one
organization, projects of 100 keys, assorted probe states, no probe results), makes an
API token for its superuser, then calls each read endpoint in-process (Django's test
client, no network) and prints the median time of 5 calls and the SQL queries of one;
walks every key with the cursor at the largest page; registers keys through POST /keys.
"""

import argparse
import base64
import json
import os
import secrets
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--database", default="console_bench_api")
    args = parser.parse_args()

    os.environ["CONSOLE_ENV_FILE"] = os.devnull
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ["REDIS_URL"] = ""
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ["API_RATE_LIMIT_PER_MINUTE"] = "1000000"  # measure the API, not its limit
    os.environ["CELERY_BROKER_DIR"] = f"/tmp/{args.database}-broker"  # first probes: queued to a folder
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_hex(24))
    os.environ.setdefault("CONSOLE_ENCRYPTION_KEYS", "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode())
    os.environ.setdefault("CONSOLE_FINGERPRINT_KEY", secrets.token_urlsafe(32))
    from pathlib import Path

    from bench.probe_sweep import create_database

    for folder in ("out", "processed", "control"):
        Path(os.environ["CELERY_BROKER_DIR"], folder).mkdir(parents=True, exist_ok=True)
    create_database(args.database)

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from bench.admin_pages import seed

    started = time.monotonic()
    world = seed(argparse.Namespace(keys=args.keys, results_per_key=0))
    print(f"seeded {args.keys} keys in {time.monotonic() - started:.0f} s")
    from api.models import ApiToken

    token = ApiToken(user=world["admin"], name="bench")
    plaintext = token.issue()
    token.save()
    print()
    measure(world, plaintext, args.keys)


def measure(world, plaintext, n_keys):
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from keys import formats

    client = Client(headers={"Authorization": f"Bearer {plaintext}"})
    key = world["key"]
    calls = [
        ("GET /keys (first page, 50)", "/api/v1/keys"),
        (f"GET /keys?limit={settings.API_PAGE_SIZE_MAX}", f"/api/v1/keys?limit={settings.API_PAGE_SIZE_MAX}"),
        ("GET /keys?flag=failing", "/api/v1/keys?flag=failing"),
        ("GET /keys?state=overdue", "/api/v1/keys?state=overdue"),
        ("GET /keys?project=<id>", f"/api/v1/keys?project={world['project'].pk}"),
        ("GET /keys/{id}/status", f"/api/v1/keys/{key.pk}/status"),
        ("GET /organizations", "/api/v1/organizations"),
        ("GET /projects", "/api/v1/projects"),
        ("GET /reports/rotation (page of 50, totals of all)", "/api/v1/reports/rotation"),
        ("GET /reports/rotation?as_of=<30 days ago>", "/api/v1/reports/rotation?as_of=" + as_of_30_days()),
        ("GET /budgets/projects (50)", "/api/v1/budgets/projects"),
    ]
    print(f"{'call':50} {'median':>8} {'queries':>8}")
    for label, url in calls:
        timings = []
        for _ in range(5):
            with CaptureQueriesContext(connection) as queries:
                started = time.monotonic()
                response = client.get(url)
                timings.append(time.monotonic() - started)
            assert response.status_code == 200, (url, response.status_code, response.content[:300])
        print(f"{label:50} {statistics.median(timings) * 1000:6.0f} ms {len(queries):8}")

    started = time.monotonic()
    seen, pages, cursor = 0, 0, None
    while True:
        url = f"/api/v1/keys?limit={settings.API_PAGE_SIZE_MAX}" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url).json()
        seen += len(page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    elapsed = time.monotonic() - started
    assert seen == n_keys, (seen, n_keys)
    print(f"walk every key ({seen} in {pages} pages)                 {elapsed:6.1f} s ({seen / elapsed:,.0f} keys/s)")

    timings = []
    for i in range(20):
        body = {"project": world["project"].pk, "name": f"bench api {i}", "secret": formats.generate()}
        started = time.monotonic()
        response = client.post("/api/v1/keys", json.dumps(body), content_type="application/json")
        timings.append(time.monotonic() - started)
        assert response.status_code == 201, response.content[:300]
    print(f"{'POST /keys (register; 20 keys)':50} {statistics.median(timings) * 1000:6.0f} ms")


def as_of_30_days():
    from datetime import timedelta

    from django.utils import timezone

    return (timezone.now() - timedelta(days=30)).date().isoformat()


if __name__ == "__main__":
    main()
