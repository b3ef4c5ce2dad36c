"""Time to first byte and to the whole file of the report downloads, on an existing
benchmark database (bench/admin_pages.py seeds console_bench_pages), as an admin and as a
security reviewer: the median of `--runs` downloads after one warm-up.

    PYTHONPATH=. .venv/bin/python scripts/download_timing.py --database console_bench_pages

Read-only: everything the downloads write (their audit events) is rolled back at the end.
"""

import argparse
import base64
import os
import secrets
import statistics
import time
from datetime import UTC, datetime, timedelta

THIRTY_DAYS_AGO = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%d")
PATHS = {
    "rotation report CSV": "/admin/keys/apikey/rotation-report/?format=csv",
    "rotation report CSV, overdue": "/admin/keys/apikey/rotation-report/?format=csv&state=overdue",
    "rotation report CSV, as of -30 d": f"/admin/keys/apikey/rotation-report/?format=csv&as_of={THIRTY_DAYS_AGO}",
    "rotation report CSV, as of, overdue": (
        f"/admin/keys/apikey/rotation-report/?format=csv&as_of={THIRTY_DAYS_AGO}&state=overdue"
    ),
    "rotation report JSON": "/admin/keys/apikey/rotation-report/?format=json",
    "audit log CSV": "/admin/accounts/auditevent/export/",
}


class Rollback(Exception):
    pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="console_bench_pages")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="", help="Only the downloads whose label contains this.")
    args = parser.parse_args()
    os.environ.update(
        CONSOLE_ENV_FILE=os.devnull,
        DJANGO_SETTINGS_MODULE="console.settings",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{args.database}",
        REDIS_URL="",
        LOG_LEVEL="WARNING",
        ALLOWED_HOSTS="testserver",
        SECRET_KEY="bench-" + secrets.token_hex(24),
        CONSOLE_ENCRYPTION_KEYS="v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        CONSOLE_FINGERPRINT_KEY=secrets.token_urlsafe(32),
    )
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.db import transaction
    from django.test import Client

    settings.STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"

    def download(client, path):
        start = time.monotonic()
        response = client.get(path)
        chunks = iter(response.streaming_content) if response.streaming else iter([response.content])
        size = len(next(chunks, b""))
        first = time.monotonic() - start
        size += sum(len(chunk) for chunk in chunks)
        return first, time.monotonic() - start, size

    print(f"{'download':36} {'role':9} {'first byte':>11} {'whole file':>11} {'bytes':>10}")
    try:
        with transaction.atomic():
            for label, path in PATHS.items():
                if args.only not in label:
                    continue
                for role in ("admin", "reviewer"):
                    client = Client()
                    client.force_login(User.objects.get(username=role))
                    download(client, path)
                    runs = [download(client, path) for _ in range(args.runs)]
                    first = statistics.median(r[0] for r in runs) * 1000
                    whole = statistics.median(r[1] for r in runs) * 1000
                    print(f"{label:36} {role:9} {first:8.0f} ms {whole:8.0f} ms {runs[-1][2]:10}", flush=True)
            raise Rollback
    except Rollback:
        pass
    print("load average (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
