"""Benchmark: probe-result retention (keys/retention.py) on PostgreSQL.

    python -m bench.retention --keys 50000 --interval-minutes 60 --days 8
    python -m bench.retention --keys 2000 --interval-minutes 5 --days 8      (small)

Seeds N keys (bulk_create; placeholder ciphertexts — no secret, nothing is probed) and
their probe results every `interval` minutes for `days` days up to now with one
INSERT … SELECT over generate_series (about 1 % timeouts, so there are transitions), then
runs the daily retention task's work: `retention.run(now, keep_days=7)` rolls everything
before midnight UTC seven days back into ProbeDaily and ProbeTransition and deletes it.

Prints the scale used, rows/second for the rollup + prune (and for the DELETE alone),
the sizes (pg_total_relation_size) before, after the prune + VACUUM, and of the rollup
tables, the steady state (7 days of full rows) and an extrapolation to 1,000,000 keys
probed hourly, clearly labelled. For the partitioning decision it also times dropping a
one-day table of the same rows (what a daily partition drop would cost instead of the
DELETE). Uses its own database (console_bench_retention), dropped and created afresh.
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--interval-minutes", type=int, default=60)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--keep-days", type=int, default=7)
    parser.add_argument("--batch-keys", type=int, default=500)
    parser.add_argument("--database", default="console_bench_retention")
    args = parser.parse_args()

    os.environ["CONSOLE_ENV_FILE"] = os.devnull
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ["REDIS_URL"] = ""
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("SECRET_KEY", "bench-" + os.urandom(24).hex())
    import base64
    import secrets

    os.environ.setdefault("CONSOLE_ENCRYPTION_KEYS", "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode())
    os.environ.setdefault("CONSOLE_FINGERPRINT_KEY", secrets.token_urlsafe(32))
    create_database(args.database)

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.db import connection
    from django.utils import timezone

    from keys import retention

    now = timezone.now()
    per_key = args.days * 24 * 60 // args.interval_minutes
    print(
        f"scale: {args.keys:,} keys × one probe every {args.interval_minutes} min × {args.days} days "
        f"= {args.keys * per_key:,} probe results (keep {args.keep_days} days)"
    )
    started = time.monotonic()
    seed_keys(args.keys)
    seed_results(now, args.days, args.interval_minutes)
    seeded = time.monotonic() - started
    total = count("keys_proberesult")
    print(f"seeded {total:,} rows in {seeded:.1f} s ({total / seeded:,.0f} rows/s, indexes included)")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE keys_proberesult")
    before_size = size("keys_proberesult")
    print(f"keys_proberesult before: {mb(before_size)} ({before_size / total:.0f} bytes/row with indexes)")

    cutoff = retention.cutoff(now, args.keep_days)
    old = count("keys_proberesult", "started_at < %s", [cutoff])
    one_day_ms = drop_one_day_estimate(cutoff)

    started = time.monotonic()
    summary = retention.run(now, args.keep_days, batch_keys=args.batch_keys)
    took = time.monotonic() - started
    assert summary.rolled_up == old, (summary.rolled_up, old)
    print(
        f"rollup + prune: {summary.rolled_up:,} rows (before {cutoff:%Y-%m-%d %H:%M} UTC) in {took:.1f} s = "
        f"{summary.rolled_up / took:,.0f} rows/s over {summary.chunks} chunks of {args.batch_keys} keys; "
        f"{summary.days:,} daily rows, {summary.transitions:,} transitions"
    )
    delete_rate = summary.rolled_up / max(summary.delete_seconds, 1e-9)
    print(
        f"  of which DELETE: {summary.delete_seconds:.1f} s ({delete_rate:,.0f} rows/s); "
        f"rollup + transitions: {took - summary.delete_seconds:.1f} s"
    )
    print(f"  a daily partition of the same rows would be dropped in ~{one_day_ms:.0f} ms (DROP TABLE of a copy)")

    again_started = time.monotonic()
    again = retention.run(now, args.keep_days, batch_keys=args.batch_keys)
    print(
        f"rerun before VACUUM (idempotent, nothing left): {again.rolled_up} rows in "
        f"{time.monotonic() - again_started:.1f} s (index scans still step over the dead rows)"
    )

    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) keys_proberesult")
    after_rows = count("keys_proberesult")
    after_size = size("keys_proberesult")
    steady = after_rows * before_size / total
    print(
        f"keys_proberesult after prune + VACUUM: {after_rows:,} rows, file {mb(after_size)} "
        f"(freed pages are reused, not returned); live data ≈ {mb(steady)}"
    )
    again_started = time.monotonic()
    again = retention.run(now, args.keep_days, batch_keys=args.batch_keys)
    print(f"rerun after VACUUM: {again.rolled_up} rows in {time.monotonic() - again_started:.1f} s")
    print(f"keys_probedaily: {count('keys_probedaily'):,} rows, {mb(size('keys_probedaily'))}")
    print(f"keys_probetransition: {count('keys_probetransition'):,} rows, {mb(size('keys_probetransition'))}")

    print("EXTRAPOLATION (linear, not measured) to 1,000,000 keys probed hourly:")
    rows_per_day = 1_000_000 * 24
    rate = summary.rolled_up / took
    print(
        f"  {rows_per_day:,} rows to roll up and delete per day: ~{rows_per_day / rate / 60:.0f} min/day at "
        f"{rate:,.0f} rows/s; steady state {args.keep_days}-{args.keep_days + 1} days of full rows "
        f"≈ {mb(rows_per_day * (args.keep_days + 1) * before_size / total)} + rollups "
        f"≈ {mb(1_000_000 * 365 * size('keys_probedaily') / max(count('keys_probedaily'), 1))} per year"
    )


def create_database(name):
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def seed_keys(n):
    """Placeholder keys: a random ciphertext, no secret behind it (nothing is probed)."""
    from django.db import transaction

    from accounts.models import Organization, Project, Tier
    from keys.models import ApiKey

    org = Organization.objects.create(name="Bench", slug="bench")
    tier = Tier.objects.first()
    projects = [
        Project.objects.create(organization=org, name=f"p{i}", openai_project_id=f"proj_bench{i:06d}", tier=tier)
        for i in range((n + 99) // 100)
    ]
    keys = [
        ApiKey(
            organization=org,
            project=projects[i // 100],
            name=f"k{i}",
            secret_ciphertext=os.urandom(16),
            secret_key_version=1,
            fingerprint=f"bench{i:08d}",
            hint="bench",
        )
        for i in range(n)
    ]
    with transaction.atomic():
        ApiKey.objects.bulk_create(keys, batch_size=2000)


def seed_results(now, days, interval_minutes):
    """Every key probed every `interval` minutes, one INSERT … SELECT per day."""
    from datetime import timedelta

    from django.db import connection, transaction

    start = now - timedelta(days=days)
    for day in range(days):
        since, until = start + timedelta(days=day), start + timedelta(days=day + 1)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                """
                INSERT INTO keys_proberesult
                    (key_id, slot, started_at, duration_ms, attempts, outcome, http_status, error_code, message,
                     request_id, client_request_id, ratelimit_reset_requests, ratelimit_reset_tokens,
                     openai_organization, secret_hint)
                SELECT k.id, extract(epoch FROM t)::bigint, t, (50 + random() * 450)::int, 1,
                       CASE WHEN random() < 0.01 THEN 'timeout' ELSE 'ok' END, 200, '', '',
                       'req_bench', 'bench', '', '', '', 'bench'
                FROM keys_apikey k
                CROSS JOIN generate_series(%s::timestamptz, %s::timestamptz - interval '1 microsecond',
                                           make_interval(mins => %s)) t
                """,
                [since, until, interval_minutes],
            )


def drop_one_day_estimate(cutoff):
    """Copy one day of rows into a table of their own and time DROP TABLE: what dropping a
    daily partition costs (a catalog change and unlinking files, whatever the rows)."""
    from datetime import timedelta

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE bench_one_day AS SELECT * FROM keys_proberesult WHERE started_at >= %s AND started_at < %s",
            [cutoff - timedelta(days=1), cutoff],
        )
        cursor.execute("CREATE INDEX ON bench_one_day (key_id, started_at DESC)")
        started = time.monotonic()
        cursor.execute("DROP TABLE bench_one_day")
        return (time.monotonic() - started) * 1000


def count(table, where="TRUE", params=()):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table} WHERE {where}", list(params))
        return cursor.fetchone()[0]


def size(table):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_total_relation_size(%s)", [table])
        return cursor.fetchone()[0]


def mb(n):
    return f"{n / 1024 / 1024:,.1f} MB" if n < 1024**3 else f"{n / 1024**3:,.2f} GB"


if __name__ == "__main__":
    main()
