"""Benchmark: ingest 90 days of daily usage and cost buckets through the sandbox API.

    python -m bench.usage_ingest                       # 90 days × 1,000 keys × 3 models
    python -m bench.usage_ingest --days 7 --keys 100   # a quick run while developing

Seeds one organization with an admin key and N keys (upstream ids registered locally,
spread over projects) in a dedicated PostgreSQL database (console_bench_usage), starts
the sandbox API over real HTTP on loopback with a usage plan of those keys × the models,
then runs usage/ingest.py's `ingest_organization` twice over the same window: the first
ingest (every row new) and a re-ingest (every row unchanged). Prints for each the wall
time, rows read and rows/second, and what the re-ingest wrote (target: 0 rows).

By default the endpoints are completions (one row per day, key and model: days × keys ×
models rows) and costs (two line items, input and output, per completions row);
`--all-endpoints` adds the seven other usage endpoints.
"""

import argparse
import base64
import cProfile
import os
import pstats
import resource
import secrets
import time
from datetime import timedelta
from pathlib import Path

from bench.probe_sweep import create_database, start_sandbox

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--models", type=int, default=3, choices=range(1, len(MODELS) + 1))
    parser.add_argument("--keys-per-project", type=int, default=50)
    parser.add_argument("--all-endpoints", action="store_true", help="Every usage endpoint, not only completions.")
    parser.add_argument("--profile", action="store_true", help="Print each ingest's cProfile top 30.")
    parser.add_argument("--database", default="console_bench_usage")
    parser.add_argument("--port", type=int, default=8198)
    args = parser.parse_args()

    os.environ["CONSOLE_ENV_FILE"] = os.devnull
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{args.port}/v1"
    os.environ["CONSOLE_ALLOWED_API_HOSTS"] = f"127.0.0.1:{args.port}"  # plain http to the loopback sandbox
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/12")
    # The sandbox builds a whole page before answering: a 31-day costs page at full size
    # is 186,000 results (~37 MB), which on a busy 2-core machine can take longer than
    # the 10 s production default to start arriving.
    os.environ.setdefault("UPSTREAM_READ_TIMEOUT", "120")
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("SECRET_KEY", "bench-" + os.urandom(24).hex())
    os.environ.setdefault("CONSOLE_ENCRYPTION_KEYS", "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode())
    os.environ.setdefault("CONSOLE_FINGERPRINT_KEY", secrets.token_urlsafe(32))
    create_database(args.database)

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    sandbox = start_sandbox(args.port)
    try:
        from sandbox.control import SandboxControl

        control = SandboxControl(f"http://127.0.0.1:{args.port}")
        if not control.wait_ready(20):
            raise SystemExit("the sandbox did not start")
        org, plan_keys, admin_secret = seed(args)
        control.register(admin_secret, organization=org.openai_org_id)
        control.set_usage(admin_secret, keys=plan_keys, models=MODELS[: args.models], seed="bench")
        del admin_secret
        run(args, org, sandbox.pid)
    finally:
        sandbox.terminate()
        sandbox.wait(10)


def seed(args):
    """The organization, its projects and keys (upstream ids registered), an admin key.
    Returns (organization, [(key id, project id)], the admin key's secret)."""
    from django.db import transaction

    from accounts.models import Organization, Project, Tier
    from keys import formats
    from keys.models import ApiKey, Kind

    tier = Tier.objects.get(name="Tier 4+")
    org = Organization.objects.create(name="Bench", slug="bench", openai_org_id="org-BenchUsage0001")
    projects = Project.objects.bulk_create(
        Project(organization=org, name=f"p{i:04d}", openai_project_id=f"proj_bench{i:06d}", tier=tier)
        for i in range((args.keys + args.keys_per_project - 1) // args.keys_per_project)
    )
    keys, plan = [], []
    for i in range(args.keys):
        project = projects[i // args.keys_per_project]
        key = ApiKey(organization=org, project=project, name=f"k{i:06d}", upstream_key_id=f"key_bench{i:08d}")
        key.set_secret(formats.generate())  # never used: the sandbox serves usage to the admin key
        keys.append(key)
        plan.append((key.upstream_key_id, project.openai_project_id))
    admin_secret = formats.generate(formats.ADMIN)
    admin_key = ApiKey(organization=org, kind=Kind.ADMIN, name="bench admin")
    admin_key.set_secret(admin_secret)
    with transaction.atomic():
        ApiKey.objects.bulk_create([*keys, admin_key], batch_size=2000)
    return org, plan, admin_secret


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args, org, sandbox_pid):
    from django.db import connection
    from django.utils import timezone

    from usage import ingest
    from usage.models import CostBucket, Endpoint, UsageBucket

    until = ingest.day_start(timezone.now())  # today excluded: its numbers still grow
    since = until - timedelta(days=args.days)
    endpoints = [*ingest.ENDPOINTS, ingest.COSTS] if args.all_endpoints else [Endpoint.COMPLETIONS, ingest.COSTS]

    def rows():
        return UsageBucket.objects.count() + CostBucket.objects.count()

    def xact_writes():
        """Rows PostgreSQL inserted or updated in the usage tables (its statistics)."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")
            cursor.execute(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables "
                "WHERE relname IN ('usage_usagebucket', 'usage_costbucket')"
            )
            return cursor.fetchone()[0]

    # Time spent storing (rows built, compared, written), summed over the run's pages.
    real_store, store_seconds = ingest.store, []

    def timed_store(*a, **kw):
        started = time.monotonic()
        try:
            return real_store(*a, **kw)
        finally:
            store_seconds.append(time.monotonic() - started)

    ingest.store = timed_store
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend_pid = cursor.fetchone()[0]
    figures = []
    for label in ("first ingest", "re-ingest"):
        before, writes_before = rows(), xact_writes()
        profiler = cProfile.Profile() if args.profile else None
        started, cpu_started = time.monotonic(), time.process_time()
        others_started = cpu_seconds(sandbox_pid), cpu_seconds(backend_pid)
        if profiler:
            profiler.enable()
        summary = ingest.ingest_organization(org, since, until, endpoints=endpoints)
        wall, cpu = time.monotonic() - started, time.process_time() - cpu_started
        sandbox_cpu = cpu_seconds(sandbox_pid) - others_started[0]
        postgres_cpu = cpu_seconds(backend_pid) - others_started[1]
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        if summary.failed:
            raise SystemExit(f"{label} failed: {summary.failed}")
        total = summary.total()
        cpus = (cpu, sandbox_cpu, postgres_cpu)
        stored = sum(store_seconds)  # every store call of this run (one per page)
        store_seconds.clear()
        figures.append((label, wall, cpus, stored, total, rows() - before, xact_writes() - writes_before))

    print(f"window                    {args.days} days × {args.keys} keys × {args.models} models")
    print(f"endpoints                 {', '.join(str(e) for e in endpoints)}")
    print(f"load average at the end   {' '.join(f'{x:.2f}' for x in os.getloadavg())}  (2 cores shared)")
    for label, wall, (cpu, sandbox_cpu, postgres_cpu), stored, total, new_rows, written in figures:
        print(f"{label:<26}{wall:.2f} s  {total.results:,} rows read  {total.results / wall:,.0f} rows/s")
        print(
            f"{'':<26}CPU: console {cpu:.2f} s, sandbox API {sandbox_cpu:.2f} s, PostgreSQL backend "
            f"{postgres_cpu:.2f} s; storing (overlapping the fetch) {stored:.2f} s"
        )
        print(
            f"{'':<26}created {total.created:,}  updated {total.updated:,}  unchanged {total.unchanged:,}  "
            f"new rows {new_rows:,}  rows written (PostgreSQL) {written:,}"
        )
    print(f"rows in the tables        {rows():,}")
    print(f"peak RSS this process     {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
