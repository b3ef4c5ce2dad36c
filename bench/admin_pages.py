"""Benchmark: every admin page at 1,000 and 50,000 keys, as an admin and as a reviewer.

    python -m bench.admin_pages                          # --sizes 1000,50000
    python -m bench.admin_pages --sizes 50000 --runs 5

For each size, in its own fresh PostgreSQL database (console_bench_pages, dropped and
created again): 20 organizations, 500 projects (250 in the first organization, the rest
spread over the others; assorted environments,
tiers, rotation policies, a few archived, some whose observed limits differ from their
tier's, budgets on projects and organizations: some over, some forecast to exceed), N
keys in every state a key-list filter selects (revoked, expired, due soon, overdue,
failing, rate limited, never probed, leaked, unused, usage unknown, deleted upstream,
owner left, service-account, admin and Azure keys), 20 × N probe results in the last 7
days, 10 × N usage rows (6 usage buckets and 4 cost buckets per key, this month) and
1 × N audit events. Probe results, usage rows and audit events are written with COPY.

Then renders every page of bench/pages.py (the list tests/test_page_queries.py pins) as a
superuser ("admin") and as a security reviewer (Django's test client, no network): one
warm-up, then the median of `--runs` renders and the SQL query count. Prints one table
over the sizes, flagging a page whose query counts differ between sizes (!=) or whose
median at the largest size is 300 ms or more (SLOW), with the load average. `--commands`
also times `list_keys --format json` and a sweep claim of every key at the largest size.
"""

import argparse
import base64
import json
import os
import secrets
import statistics
import time

DATABASE = "console_bench_pages"
TARGET_MS = 300


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,50000", help="key counts, comma-separated")
    parser.add_argument("--keys", type=int, help="one size only (same as --sizes N)")
    parser.add_argument(
        "--commands", action="store_true", help="also time list_keys --format json and a sweep claim, largest size"
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database", default=DATABASE)
    parser.add_argument("--only", default="", help="only pages whose label contains this")
    parser.add_argument(
        "--reuse", action="store_true", help="measure the database the last run seeded (one size), no seeding"
    )
    args = parser.parse_args()
    sizes = [args.keys] if args.keys else [int(s) for s in args.sizes.split(",")]

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

    if not args.reuse:
        create_database(args.database)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    settings.STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"
    settings.WHITENOISE_AUTOREFRESH = True  # no collectstatic needed for the benchmark

    results = {}
    for n in sizes:
        if args.reuse:
            call_command("migrate", verbosity=0)  # an index added since
            results[n] = measure(seeded_world(n), args.runs, args.only)
            continue
        connection.close()
        create_database(args.database)
        call_command("migrate", verbosity=0)
        started = time.monotonic()
        world = seed(n)
        print(
            f"seeded {n} keys, {20 * n} probe results, {10 * n} usage rows, {n} audit events "
            f"in {time.monotonic() - started:.0f} s",
            flush=True,
        )
        results[n] = measure(world, args.runs, args.only)
    print()
    print_table(sizes, results)
    if args.commands:
        print()
        measure_commands()


def copy_rows(model, rows):
    """COPY `rows` (dicts of attname → value; missing columns take the field's default)
    into `model`'s table: the fast way to write a million rows (as usage/ingest.py does)."""
    from django.db import connection

    fields = [f for f in model._meta.concrete_fields if f.get_internal_type() not in ("AutoField", "BigAutoField")]
    defaults = {f.attname: f.get_default() for f in fields}
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    count = 0
    with (
        connection.cursor() as cursor,
        cursor.copy(f"COPY {quote(model._meta.db_table)} ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            values = []
            for f in fields:
                value = row.get(f.attname, defaults[f.attname])
                if f.get_internal_type() == "JSONField":
                    value = json.dumps(value)
                values.append(value)
            copy.write_row(values)
            count += 1
    return count


def budget_for(state, spend, now):
    """A monthly budget putting `spend` (billed so far) in budget `state` under the 1 %
    threshold (usage/budgets.py; tests/test_page_queries.py does the same). On a month's
    last day the forecast is the spend: nothing is "forecast" then."""
    from decimal import Decimal

    from usage import budgets

    forecast = budgets.forecast(spend, now)
    budget = {
        "over": spend / 2,
        "forecast": (spend + forecast) / 2,
        "near": forecast * Decimal("1.05"),
        "within": spend * 200,
    }.get(state)
    return None if budget is None else budget.quantize(Decimal("0.01"))


def seed(n):
    from datetime import timedelta
    from decimal import Decimal

    from django.contrib.auth.models import Group, User
    from django.db import connection, transaction
    from django.utils import timezone

    from accounts.access import REVIEWERS
    from accounts.models import AuditEvent, Environment, Organization, Project, Tier
    from console.upstream import Outcome
    from keys import formats
    from keys.models import ApiKey, Kind, ProbeResult, Provider
    from usage.models import BudgetAlert, CostBucket, Endpoint, UsageBucket

    now = timezone.now()
    tiers = list(Tier.objects.order_by("position"))
    environments = Environment.values
    orgs = Organization.objects.bulk_create(
        Organization(
            name=f"Org {o:02d}",
            slug=f"org-{o:02d}",
            openai_org_id=f"org-Bench{o:08d}",
            rotation_policy_days=90 if o % 2 else 180,
            alert_emails="ops@example.com",
            # A 1 % threshold first: "near" (past it, forecast within) exists any day of the month.
            alert_thresholds="1,50,80,100",
        )
        for o in range(20)
    )
    projects = Project.objects.bulk_create(
        Project(
            # Half of them in the first organization (its page lists 250), the rest spread.
            organization=orgs[0 if p < 250 else 1 + p % 19],
            name=f"project {p:04d}",
            openai_project_id=f"proj_bench{p:06d}",
            environment=environments[p % len(environments)],
            tier=tiers[p % len(tiers)],
            rotation_policy_days=30 if p % 7 == 0 else None,
            archived_at=now - timedelta(days=3) if p % 50 == 0 else None,
            # Some projects' observed limit differs from their tier's (tier mismatch).
            observed_rpm=tiers[p % len(tiers)].requests_per_minute + (1 if p % 9 == 0 else 0),
            observed_limits_at=now,
        )
        for p in range(500)
    )
    outcomes = [Outcome.OK] * 6 + [Outcome.INVALID_KEY, Outcome.RATE_LIMITED, Outcome.TIMEOUT, ""]
    keys = []
    for i in range(n):
        project = projects[i * len(projects) // n]
        kind, provider, fmt, endpoint = Kind.PROJECT, Provider.OPENAI, formats.PROJECT, ""
        if i % 100 == 99:
            kind, fmt = Kind.SERVICE_ACCOUNT, formats.SERVICE_ACCOUNT
        elif i % 100 == 98:
            provider, fmt, endpoint = Provider.AZURE, formats.AZURE, "https://bench-resource.openai.azure.com"
        outcome = outcomes[i % len(outcomes)]
        key = ApiKey(
            organization=project.organization,
            project=project,
            name=f"k{i:06d}",
            kind=kind,
            provider=provider,
            azure_endpoint=endpoint,
            azure_api_version="2024-10-21" if endpoint else "",
            owner=f"team {i % 37}",
            upstream_key_id=f"key_bench{i:08d}",
            # Spread over 400 days: compliant, due soon and overdue under 30/90/180-day policies.
            issued_at=now - timedelta(days=i % 400, hours=i % 24),
            rotated_at=now - timedelta(days=i % 70) if i % 3 == 0 else None,
            expires_at=(now - timedelta(days=1))
            if i % 50 == 1
            else (now + timedelta(days=200) if i % 5 == 0 else None),
            revoked_at=now - timedelta(days=i % 10) if i % 50 == 0 else None,
            leaked_at=now - timedelta(days=2) if i % 200 == 3 else None,
            deleted_upstream_at=now - timedelta(days=1) if i % 100 == 5 else None,
            owner_left_at=now - timedelta(days=4) if i % 150 == 7 else None,
            # Used lately, unused for weeks, or no usage information at all.
            last_used_at=None if i % 4 == 0 else now - timedelta(days=(i % 60)),
            last_probe_at=now if outcome else None,
            last_probe_outcome=outcome,
            last_success_at=now if outcome == Outcome.OK else None,
            consecutive_failures=(1 + i % 4) if outcome in Outcome.failures() else 0,
            next_probe_at=now + timedelta(minutes=i % 60),
        )
        key.set_secret(formats.generate(fmt))
        keys.append(key)
    for o, org in enumerate(orgs):
        key = ApiKey(
            organization=org, project=None, name=f"admin key {o:02d}", kind=Kind.ADMIN, issued_at=now, owner="ops"
        )
        key.set_secret(formats.generate(formats.ADMIN))
        keys.append(key)
    with transaction.atomic():
        ApiKey.objects.bulk_create(keys, batch_size=2000)
    project_keys = [k for k in keys if k.project_id]

    # 20 probe results per key, every 8 hours over the last 7 days (the dashboard's chart).
    copy_rows(
        ProbeResult,
        (
            {
                "key_id": k.pk,
                "slot": int((now - timedelta(hours=8 * s)).timestamp()) // 60 * 60,
                "started_at": now - timedelta(hours=8 * s, seconds=j % 3600),
                "duration_ms": 40 + j % 200,
                "outcome": k.last_probe_outcome or Outcome.OK,
                "http_status": 200 if (k.last_probe_outcome or Outcome.OK) == Outcome.OK else 401,
                "request_id": f"req_{j:08d}{s:02d}",
                "secret_hint": k.hint,
            }
            for j, k in enumerate(project_keys)
            for s in range(20)
        ),
    )

    # 10 usage rows per key this month: 6 usage buckets, 4 cost buckets (for spend and budgets).
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = max((now - month).days, 1)
    spend = {}
    amount = Decimal("0.50")

    def day(d):
        return month + timedelta(days=d % days)

    copy_rows(
        UsageBucket,
        (
            {
                "organization_id": k.organization_id,
                "project_id": k.project_id,
                # Every tenth key's usage is under an upstream id not registered here.
                "key_id": None if j % 10 == 0 else k.pk,
                "endpoint": Endpoint.COMPLETIONS,
                "start_time": day(d),
                "end_time": day(d) + timedelta(days=1),
                "upstream_project_id": k.project.openai_project_id,
                "upstream_key_id": f"key_unknown{j:08d}" if j % 10 == 0 else k.upstream_key_id,
                "model": "gpt-4o-mini" if d % 2 else "gpt-4.1",
                "input_tokens": 1000 + d,
                "output_tokens": 100 + d,
                "num_model_requests": 3 + d,
                "ingested_at": now,
            }
            for j, k in enumerate(project_keys)
            for d in range(6)
        ),
    )
    for k in project_keys:
        spend[k.project_id] = spend.get(k.project_id, 0) + 4 * amount
    copy_rows(
        CostBucket,
        (
            {
                "organization_id": k.organization_id,
                "project_id": k.project_id,
                "key_id": k.pk,
                "start_time": day(d),
                "end_time": day(d) + timedelta(days=1),
                "upstream_project_id": k.project.openai_project_id,
                "upstream_key_id": k.upstream_key_id,
                "line_item": f"gpt-4o-mini, {'input' if d % 2 else 'output'} {d}",
                "amount": amount,
                "ingested_at": now,
            }
            for k in project_keys
            for d in range(4)
        ),
    )
    # Budgets against that spend: over, forecast to exceed, near, within, none.
    states = ["over", "forecast", "near", "within", "none"]
    for i, p in enumerate(projects):
        p.monthly_budget_usd = budget_for(states[i % 5], spend.get(p.pk, Decimal(1)), now)
    Project.objects.bulk_update(projects, ["monthly_budget_usd"], batch_size=500)
    for o, org in enumerate(orgs):
        total = sum((spend.get(p.pk, 0) for p in projects if p.organization_id == org.pk), Decimal(0))
        org.monthly_budget_usd = budget_for(states[o % 5], total, now)
    Organization.objects.bulk_update(orgs, ["monthly_budget_usd"])
    BudgetAlert.objects.bulk_create(
        BudgetAlert(
            organization=p.organization,
            project=p,
            threshold=100,
            month=month.date(),
            spend_usd=spend.get(p.pk, 0),
            budget_usd=p.monthly_budget_usd,
        )
        for p in projects
        if p.monthly_budget_usd is not None and p.monthly_budget_usd < spend.get(p.pk, 0)
    )

    admin = User.objects.create_superuser("admin", "admin@example.com", secrets.token_urlsafe(16))
    reviewer = User.objects.create_user("reviewer", "reviewer@example.com", secrets.token_urlsafe(16), is_staff=True)
    reviewer.groups.add(Group.objects.get(name=REVIEWERS))
    actions = ["key.created", "key.updated", "key.probe_requested", "key.rotated", "key.revoked", "auth.login"]
    copy_rows(
        AuditEvent,
        (
            {
                "at": now - timedelta(minutes=j),
                "actor_id": admin.pk,
                "actor_label": "admin",
                "action": actions[j % len(actions)],
                "target_type": "key",
                "target_id": str(k.pk),
                "target_repr": str(k),
                "details": {"hint": k.hint, "ip": "127.0.0.1"},
            }
            for j, k in enumerate(keys[:n])
        ),
    )
    # Beat rolls up each settled hour's probe outcomes every 5 minutes (keys/probe_hours.py):
    # the steady state the dashboard is timed in.
    from keys import probe_hours

    probe_hours.roll_up(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return {
        "users": {"admin": admin, "reviewer": reviewer},
        "ids": {"org": orgs[0].pk, "project": projects[len(projects) // 2].pk, "key": keys[n // 2].pk},
    }


def seeded_world(n):
    """The world `seed(n)` left in the database (--reuse)."""
    from django.contrib.auth.models import User

    from accounts.models import Organization, Project
    from keys.models import ApiKey

    return {
        "users": {"admin": User.objects.get(username="admin"), "reviewer": User.objects.get(username="reviewer")},
        "ids": {
            "org": Organization.objects.get(slug="org-00").pk,
            "project": Project.objects.get(name="project 0250").pk,
            "key": ApiKey.objects.get(name=f"k{n // 2:06d}").pk,
        },
    }


def render(client, path):
    """GET `path`, reading a streamed body to its end (the CSV exports)."""
    response = client.get(path)
    if response.streaming:
        b"".join(response.streaming_content)
    return response


def measure(world, runs, only=""):
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from bench.pages import ROLES, pages

    measured = {}
    for role in ROLES:
        client = Client()
        client.force_login(world["users"][role])
        for page in pages(world["ids"]):
            if only and only not in page.label:
                continue
            expected = 200 if role == "admin" else page.reviewer_status
            render(client, page.path)  # warm-up
            timings = []
            for _ in range(runs):
                with CaptureQueriesContext(connection) as queries:
                    started = time.perf_counter()
                    response = render(client, page.path)
                    timings.append(time.perf_counter() - started)
                assert response.status_code == expected, (role, page.path, response.status_code)
            measured[(page.label, role)] = (statistics.median(timings) * 1000, len(queries))
        print(f"  {role}: measured, load average {os.getloadavg()[0]:.1f}", flush=True)
    return measured


def measure_commands():
    """The inventory command and the sweep's claim over every key of the last size seeded."""
    import io
    from datetime import timedelta

    from django.core.management import call_command
    from django.utils import timezone

    from keys import sweep

    started = time.monotonic()
    call_command("list_keys", "--format", "json", stdout=io.StringIO())
    print(f"list_keys --format json (all keys)        {time.monotonic() - started:6.2f} s")
    started = time.monotonic()
    claims = sweep.claim_due(timezone.now() + timedelta(minutes=61))  # next probes are within the hour
    print(f"sweep claim of every due key ({len(claims)})     {time.monotonic() - started:6.2f} s")


def print_table(sizes, results):
    from bench.pages import ROLES

    head = "".join(f" {'median @' + label(n):>14} {'queries':>8}" for n in sizes)
    print(f"{'page':48} {'role':9}{head}  flags")
    largest = sizes[-1]
    for page_label, role in results[sizes[0]]:
        if role != ROLES[0]:
            continue
        for r in ROLES:
            cells, counts = "", set()
            for n in sizes:
                ms, q = results[n].get((page_label, r), (float("nan"), -1))
                cells += f" {ms:11.0f} ms {q:8}"
                counts.add(q)
            flags = []
            if len(counts) > 1:
                flags.append("!=")
            if results[largest].get((page_label, r), (0,))[0] >= TARGET_MS:
                flags.append("SLOW")
            print(f"{page_label:48} {r:9}{cells}  {' '.join(flags)}".rstrip())
    print(f"\nload average (1, 5, 15 min): {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def label(n):
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


if __name__ == "__main__":
    main()
