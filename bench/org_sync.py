"""Benchmark: sync one organization of 500 projects × 100 keys through the sandbox.

    python -m bench.org_sync --projects 500 --keys-per-project 100

Creates a fresh PostgreSQL database (console_bench_sync), starts the sandbox API, gives
one organization an admin key and seeds its Administration API state with the sandbox's
generator (N projects with M keys each, one owner who is a member of every project; every
project also lists the sandbox's default per-model rate limits). Then times the first
sync (every project and key new here: 500 projects created, 50,000 unmanaged keys) and a
second one (nothing changed), and prints seconds, requests and rows per second.
"""

import argparse
import base64
import os
import secrets
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=500)
    parser.add_argument("--keys-per-project", type=int, default=100)
    parser.add_argument("--database", default="console_bench_sync")
    parser.add_argument("--port", type=int, default=8198)
    args = parser.parse_args()

    os.environ["CONSOLE_ENV_FILE"] = os.devnull
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ["REDIS_URL"] = ""
    os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{args.port}/v1"
    os.environ["CONSOLE_ALLOWED_API_HOSTS"] = f"127.0.0.1:{args.port}"
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_hex(24))
    os.environ.setdefault("CONSOLE_ENCRYPTION_KEYS", "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode())
    os.environ.setdefault("CONSOLE_FINGERPRINT_KEY", secrets.token_urlsafe(32))
    from bench.probe_sweep import create_database, start_sandbox

    create_database(args.database)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    sandbox = start_sandbox(args.port)
    try:
        from sandbox.control import SandboxControl

        control = SandboxControl(f"http://127.0.0.1:{args.port}")
        control.wait_ready(15)
        org = seed(args, control)

        from sync import sync
        from sync.models import UpstreamKey

        total_keys = args.projects * args.keys_per_project
        print(f"organization              {args.projects} projects × {args.keys_per_project} keys")
        print(f"concurrency               {settings.SYNC_CONCURRENCY} requests in flight")
        for label in ("first sync", "second sync"):
            started = time.monotonic()
            report = sync.sync_organization(org)
            wall = time.monotonic() - started
            total = report.total()
            print(
                f"{label:<25} {wall:6.1f} s  {report.requests} requests  {total_keys / wall:,.0f} keys/s  "
                f"created {total.created}  updated {total.updated}  unchanged {total.unchanged}  "
                f"unmanaged {report.unmanaged}"
            )
        assert UpstreamKey.objects.filter(organization=org).count() >= total_keys
    finally:
        sandbox.terminate()
        sandbox.wait(10)


def seed(args, control):
    from accounts.models import Organization
    from keys import formats
    from keys.models import ApiKey, Kind

    org = Organization.objects.create(name="Bench", slug="bench", openai_org_id="org-BenchSync0001")
    secret = formats.generate(formats.ADMIN)
    key = ApiKey(organization=org, kind=Kind.ADMIN, name="bench admin")
    key.set_secret(secret)
    key.save()
    # The admin key's requests draw from one per-project window in the sandbox (500 RPM by
    # default): lifted here, so the figures measure the sync, not a 429 wait it would honour.
    control.register(secret, organization=org.openai_org_id, rpm=1_000_000)
    control.seed_admin(
        org.openai_org_id,
        users=[{"id": "user_bench", "name": "Bench", "email": "bench@example.com", "role": "owner"}],
        admin_keys=[{"id": "key_benchadmin", "name": "bench admin", "key": secret, "owner": "user_bench"}],
        generate={"projects": args.projects, "keys_per_project": args.keys_per_project, "prefix": "bench"},
    )
    return org


if __name__ == "__main__":
    main()
