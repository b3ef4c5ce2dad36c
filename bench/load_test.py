"""Load test: the admin key list and the REST API under concurrent users, over HTTP.

    python -m bench.load_test --keys 50000 --users 50 --duration 60

Seeds a fresh PostgreSQL database (console_bench_load) as bench/admin_pages.py does (one
organization, projects of 100 keys, assorted probe states), runs `collectstatic` and
gunicorn (`--web-workers`, sync workers, production settings: DEBUG=false, the compressed
manifest static storage, Redis as cache) on 127.0.0.1, then runs `--users` concurrent
users on one asyncio loop (httpx2) for `--duration` seconds:

- half are console admins (the group, not superusers), logged in through the login form
  with their own session, reloading the admin key list (`/admin/keys/apikey/`, a random
  one of its first 20 pages);
- half are REST API clients with their own token, alternating a page of GET /api/v1/keys
  (following the cursor, restarting at the end) and GET /api/v1/keys/{id}/status of a
  random key.

Each user sends its next request as soon as the previous one is answered (a closed loop:
no think time). API_RATE_LIMIT_PER_MINUTE is raised to 1,000,000 for the run: it measures
the server, not the per-token limit. Prints requests, errors, requests/second and
p50/p95/p99 latency per endpoint. Every response that is not a 200 is an error.
"""

import argparse
import asyncio
import base64
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST_PER_PAGE = 100


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(args):
    env = dict(os.environ)
    env.update(
        CONSOLE_ENV_FILE=os.devnull,
        DJANGO_SETTINGS_MODULE="console.settings",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{args.database}",
        REDIS_URL=args.redis_url,
        DEBUG="false",
        LOG_LEVEL="WARNING",
        ALLOWED_HOSTS="127.0.0.1",
        API_RATE_LIMIT_PER_MINUTE="1000000",  # measure the server, not the per-token limit
        STATIC_ROOT=f"/tmp/{args.database}-static",
        SECRET_KEY="bench-" + secrets.token_hex(24),
        CONSOLE_ENCRYPTION_KEYS="v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode(),
        CONSOLE_FINGERPRINT_KEY=secrets.token_urlsafe(32),
    )
    return env


def prepare(args, env):
    """Create, migrate and seed the database; returns (users and passwords, tokens, key ids)."""
    os.environ.update(env)
    from bench.probe_sweep import create_database

    create_database(args.database)
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.cache import cache
    from django.core.management import call_command

    from api.models import ApiToken
    from bench.admin_pages import seed
    from keys.models import ApiKey

    cache.clear()
    call_command("migrate", verbosity=0)
    call_command("collectstatic", "--noinput", verbosity=0)
    started = time.monotonic()
    seed(argparse.Namespace(keys=args.keys, results_per_key=0))
    print(f"seeded {args.keys} keys in {time.monotonic() - started:.0f} s")
    admins = Group.objects.get(name="Console admins")
    logins, tokens = [], []
    for i in range(args.users):
        password = secrets.token_urlsafe(16)
        user = User.objects.create_user(f"load{i:03d}", f"load{i}@example.com", password, is_staff=True)
        User.groups.through.objects.create(user=user, group=admins)
        if i % 2 == 0:
            logins.append((user.username, password))
        else:
            token = ApiToken(user=user, name="load test")
            tokens.append(token.issue())
            token.save()
    key_ids = [str(pk) for pk in ApiKey.objects.values_list("pk", flat=True)]
    return logins, tokens, key_ids


class Recorder:
    def __init__(self):
        self.timings = {}
        self.errors = {}
        self.error_samples = {}

    def add(self, label, seconds, ok, why=None):
        self.timings.setdefault(label, []).append(seconds)
        self.errors.setdefault(label, 0)
        if not ok:
            self.errors[label] += 1
            self.error_samples.setdefault(label, why)


async def timed(client, recorder, label, url):
    started = time.monotonic()
    try:
        response = await client.get(url)
    except Exception as e:  # noqa: BLE001 — a refused or reset connection is an error, counted
        recorder.add(label, time.monotonic() - started, False, type(e).__name__)
        return None
    ok = response.status_code == 200
    recorder.add(label, time.monotonic() - started, ok, None if ok else f"HTTP {response.status_code}")
    return response if ok else None


async def log_in(client, username, password):
    page = await client.get("/admin/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = await client.post(
        "/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": csrf, "username": username, "password": password, "next": "/admin/"},
    )
    if response.status_code != 302 or "sessionid" not in client.cookies:
        raise SystemExit(f"login failed for {username}: HTTP {response.status_code}")


async def admin_user(client, pages, deadline, recorder, rng):
    while time.monotonic() < deadline:
        page = rng.randint(1, pages)
        await timed(client, recorder, "admin key list", f"/admin/keys/apikey/?p={page}")


async def api_user(client, key_ids, deadline, recorder, rng):
    cursor = None
    while time.monotonic() < deadline:
        url = "/api/v1/keys" + (f"?cursor={cursor}" if cursor else "")
        response = await timed(client, recorder, "GET /api/v1/keys (page of 50)", url)
        cursor = response.json()["next_cursor"] if response is not None else None
        if time.monotonic() >= deadline:
            break
        key_id = rng.choice(key_ids)
        await timed(client, recorder, "GET /api/v1/keys/{id}/status", f"/api/v1/keys/{key_id}/status")


async def run_users(args, base, logins, tokens, key_ids):
    import random

    import httpx2

    recorder = Recorder()
    rng = random.Random(12)
    pages = max(1, min(20, len(key_ids) // LIST_PER_PAGE))  # the admin's default 100 rows a page
    admins = [httpx2.AsyncClient(base_url=base, timeout=60) for _ in logins]
    apis = [httpx2.AsyncClient(base_url=base, timeout=60, headers={"Authorization": f"Bearer {t}"}) for t in tokens]
    try:
        # Log everyone in first (password hashing is slow on purpose), then start the clock.
        await asyncio.gather(*(log_in(client, *login) for client, login in zip(admins, logins, strict=True)))
        started = time.monotonic()
        deadline = started + args.duration
        await asyncio.gather(
            *(admin_user(client, pages, deadline, recorder, rng) for client in admins),
            *(api_user(client, key_ids, deadline, recorder, rng) for client in apis),
        )
        return recorder, time.monotonic() - started
    finally:
        for client in admins + apis:
            await client.aclose()


def percentile(values, p):
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


def report(recorder, elapsed):
    print(f"{'endpoint':34} {'requests':>9} {'errors':>7} {'req/s':>7} {'p50':>8} {'p95':>8} {'p99':>8}")
    total = errors = 0
    for label, values in recorder.timings.items():
        n, e = len(values), recorder.errors[label]
        total += n
        errors += e
        ms = [v * 1000 for v in values]
        print(
            f"{label:34} {n:9} {e:7} {n / elapsed:7.1f} "
            f"{percentile(ms, 50):6.0f}ms {percentile(ms, 95):6.0f}ms {percentile(ms, 99):6.0f}ms"
        )
    print(f"{'all':34} {total:9} {errors:7} {total / elapsed:7.1f}")
    for label, why in recorder.error_samples.items():
        if why:
            print(f"first error of {label}: {why}")
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--web-workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--database", default="console_bench_load")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12", help="cache (rate limit windows)")
    args = parser.parse_args()

    env = environment(args)
    logins, tokens, key_ids = prepare(args, env)
    port = free_port()
    log_path = Path(f"/tmp/{args.database}-gunicorn.log")
    with open(log_path, "wb") as log:
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "console.wsgi", "-w", str(args.web_workers)]
            + ["-b", f"127.0.0.1:{port}", "--error-logfile", "-", "--timeout", "60"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_up(port, web, log_path)
            print(
                f"gunicorn: {args.web_workers} workers; {len(logins)} admin users, {len(tokens)} API users, "
                f"{args.duration:.0f} s"
            )
            recorder, elapsed = asyncio.run(run_users(args, f"http://127.0.0.1:{port}", logins, tokens, key_ids))
        finally:
            web.send_signal(signal.SIGTERM)
            web.wait(30)
    errors = report(recorder, elapsed)
    server_errors = [line for line in log_path.read_text(errors="replace").splitlines() if "ERROR" in line]
    print(f"gunicorn log: {len(server_errors)} ERROR lines ({log_path})")
    sys.exit(1 if errors or server_errors else 0)


def wait_until_up(port, web, log_path, timeout=60):
    import httpx2

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if web.poll() is not None:
            raise SystemExit(f"gunicorn exited:\n{log_path.read_text()[-2000:]}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("gunicorn did not answer /healthz")


if __name__ == "__main__":
    main()
