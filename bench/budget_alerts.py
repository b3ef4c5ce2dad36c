"""Benchmark: evaluating budgets and delivering their alerts at N budgeted projects.

    python -m bench.budget_alerts --projects 1000 --days 25

Seeds a fresh PostgreSQL database (console_bench_budgets): one organization with a
budget and N projects with budgets, `days` days of cost rows (3 line items a day) per
project, and today's usage (no cost rows yet: estimated) for 3 models per project.
Spend is set so every project is over budget: each evaluation that raises alerts
raises 3 per project (50, 80, 100 %) plus the organization's.

Prints, for the first evaluation (raises everything), a second one (raises nothing: the
steady state the hourly task runs in) and the delivery of every notification (Django's
in-memory email backend, no webhook): seconds, rows per second and SQL queries.
"""

import argparse
import base64
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--days", type=int, default=25, help="Days of cost rows (this month so far; at most 27).")
    parser.add_argument("--database", default="console_bench_budgets")
    args = parser.parse_args()
    args.days = max(1, min(args.days, 27))

    os.environ["CONSOLE_ENV_FILE"] = os.devnull
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ["REDIS_URL"] = ""
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["EMAIL_URL"] = "memorymail://"
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_hex(24))
    os.environ.setdefault("CONSOLE_ENCRYPTION_KEYS", "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode())
    os.environ.setdefault("CONSOLE_FINGERPRINT_KEY", secrets.token_urlsafe(32))
    from bench.probe_sweep import create_database

    create_database(args.database)

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    now = datetime(2026, 11, args.days + 1, 12, tzinfo=UTC)
    started = time.monotonic()
    seed(args, now)
    print(f"seeded {args.projects} projects × {args.days} days × 3 cost rows in {time.monotonic() - started:.0f} s")
    measure(args, now)


def seed(args, now):
    from accounts.models import Organization, Project
    from usage.models import CostBucket, Endpoint, UsageBucket

    org = Organization.objects.create(
        name="Bench", slug="bench", monthly_budget_usd=Decimal(10 * args.projects), alert_emails="ops@example.com"
    )
    projects = Project.objects.bulk_create(
        Project(
            organization=org,
            name=f"P{i:05d}",
            openai_project_id=f"proj_Bench{i:010d}",
            monthly_budget_usd=Decimal("10"),
        )
        for i in range(args.projects)
    )
    month = now.replace(day=1, hour=0)
    # $12 billed per project so far: over its $10 budget (and the organization over its own).
    amount = (Decimal(12) / (args.days * 3)).quantize(Decimal("0.0001"))
    costs, usage = [], []
    for p in projects:
        for d in range(args.days):
            start = month + timedelta(days=d)
            for line in ("gpt-4.1, input", "gpt-4.1, output", "gpt-4o-mini, input"):
                costs.append(
                    CostBucket(
                        organization=org,
                        project=p,
                        upstream_project_id=p.openai_project_id,
                        start_time=start,
                        end_time=start + timedelta(days=1),
                        line_item=line,
                        amount=amount,
                    )
                )
        today = month + timedelta(days=args.days)
        for model in ("gpt-4.1", "gpt-4.1-mini-2025-04-14", "gpt-4o-mini"):
            usage.append(
                UsageBucket(
                    organization=org,
                    project=p,
                    endpoint=Endpoint.COMPLETIONS,
                    start_time=today,
                    end_time=today + timedelta(days=1),
                    upstream_project_id=p.openai_project_id,
                    upstream_key_id="key_Bench0000001",
                    model=model,
                    input_tokens=100_000,
                    input_cached_tokens=20_000,
                    output_tokens=10_000,
                    num_model_requests=100,
                )
            )
    CostBucket.objects.bulk_create(costs, batch_size=5000)
    UsageBucket.objects.bulk_create(usage, batch_size=5000)


def measure(args, now):
    from django.db import connection

    from accounts import notifications
    from accounts.models import Notification
    from usage import alerts
    from usage.models import BudgetAlert

    def run(label, function, count):
        queries = []

        def counted(execute, sql, params, many, context):
            queries.append(1)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(counted):
            started = time.monotonic()
            result = function()
            elapsed = time.monotonic() - started
        n = count(result)
        rate = f"{n / elapsed:,.0f}/s" if n else "—"
        print(f"{label:<42} {elapsed:7.2f} s  {n:>6} rows  {rate:>9}  {len(queries):>7} queries")
        return result

    print()
    print(f"{'':<42} {'time':>9}  {'rows':>11}  {'rate':>9}  {'queries':>15}")
    run(f"evaluate, first ({args.projects + 1} scopes)", lambda: alerts.evaluate(now), lambda s: len(s.raised))
    run("evaluate, again (nothing new)", lambda: alerts.evaluate(now), lambda s: len(s.raised))
    run("deliver every notification (email)", lambda: notifications.deliver_due(now), lambda s: s.delivered)
    run("deliver again (nothing due)", lambda: notifications.deliver_due(now), lambda s: s.delivered)
    print()
    print(f"budget alerts: {BudgetAlert.objects.count()}, notifications: {Notification.objects.count()}")


if __name__ == "__main__":
    main()
