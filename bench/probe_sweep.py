"""Benchmark: a real probe sweep through Celery against the sandbox API.

    python -m bench.probe_sweep --keys 1000 --latency-ms 100
    python -m bench.probe_sweep --keys 10000 --latency-ms 100

Seeds N keys across projects in a dedicated PostgreSQL database (console_bench), starts
the sandbox API with the given latency and a real Celery worker on Redis, runs one sweep
and waits for every result. Prints keys/second, wall time, the latency-bound ideal
(N × latency ÷ concurrency), a sequential one-client-per-call baseline measured on a
sample in the same run, and the peak memory (VmHWM) of every worker process.
"""

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--keys-per-project", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes.")
    parser.add_argument("--baseline-sample", type=int, default=30)
    parser.add_argument("--database", default="console_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--port", type=int, default=8199)
    args = parser.parse_args()

    os.environ["CONSOLE_ENV_FILE"] = os.devnull
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{args.database}"
    os.environ["REDIS_URL"] = args.redis_url
    os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{args.port}/v1"
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
    import redis

    redis.from_url(args.redis_url).flushdb()

    sandbox = start_sandbox(args.port)
    worker = None
    try:
        from sandbox.control import SandboxControl

        control = SandboxControl(f"http://127.0.0.1:{args.port}")
        control.wait_ready(15)
        secrets_by_key = seed(args, control)
        control.set_latency(args.latency_ms)

        worker = start_worker(args.concurrency)
        from django.conf import settings
        from django.db.models import Count

        from keys import tasks
        from keys.models import ProbeResult

        started = time.monotonic()
        claimed = tasks.sweep()
        while ProbeResult.objects.count() < claimed:
            time.sleep(0.05)
            if worker.poll() is not None:
                raise SystemExit("worker died")
        wall = time.monotonic() - started
        peak = process_tree_peak_rss(worker.pid)
        sandbox_peak = process_tree_peak_rss(sandbox.pid)

        baseline = sequential_baseline(secrets_by_key[: args.baseline_sample], args.port)
        ideal = args.keys * args.latency_ms / 1000 / settings.PROBE_CONCURRENCY / args.concurrency
        rate = claimed / wall
        outcomes = dict(ProbeResult.objects.values_list("outcome").annotate(n=Count("id")))
        print(f"keys                      {claimed}")
        print(f"outcomes                  {outcomes}")
        print(f"sandbox latency           {args.latency_ms} ms")
        print(f"worker processes          {args.concurrency} × {settings.PROBE_CONCURRENCY} concurrent probes")
        print(f"wall time                 {wall:.2f} s")
        print(f"keys/second               {rate:.0f}")
        print(f"latency-bound ideal       {ideal:.2f} s  (N × latency ÷ total concurrency)")
        print(f"sequential baseline       {baseline:.1f} keys/s  (one client per call, {args.baseline_sample} keys)")
        print(f"speed-up over baseline    {rate / baseline:.1f}×")
        print(f"peak RSS per worker proc  {', '.join(f'{p / 1024:.0f} MB' for p in peak)}")
        print(f"peak RSS sandbox API      {max(sandbox_peak) / 1024:.0f} MB")
        print(f"peak RSS this process     {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    finally:
        if worker:
            worker.terminate()
            worker.wait(20)
        sandbox.terminate()
        sandbox.wait(10)


def create_database(name):
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def start_sandbox(port):
    return subprocess.Popen(
        [sys.executable, "manage.py", "sandbox_api", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_worker(concurrency):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "console",
            "worker",
            "-l",
            "warning",
            "-c",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(4)  # let the pool boot; the sweep's messages wait in Redis anyway
    return proc


def seed(args, control):
    """N keys across projects (Tier 4+), each registered with the sandbox as healthy."""
    from django.db import transaction

    from accounts.models import Organization, Project, Tier
    from keys import formats
    from keys.models import ApiKey

    tier = Tier.objects.get(name="Tier 4+")
    org = Organization.objects.create(name="Bench", slug="bench")
    projects = [
        Project.objects.create(organization=org, name=f"p{i}", openai_project_id=f"proj_bench{i:06d}", tier=tier)
        for i in range((args.keys + args.keys_per_project - 1) // args.keys_per_project)
    ]
    keys, plain = [], []
    for i in range(args.keys):
        project = projects[i // args.keys_per_project]
        secret = formats.generate()
        key = ApiKey(organization=org, project=project, name=f"k{i}")
        key.set_secret(secret)
        keys.append(key)
        plain.append(secret)
    with transaction.atomic():
        ApiKey.objects.bulk_create(keys, batch_size=1000)
    for secret, key in zip(plain, keys, strict=True):
        control.register(secret, project=key.project.openai_project_id, rpm=1_000_000)
    return plain


def sequential_baseline(sample, port):
    """keys/s probing one at a time, a new SDK client (and connection) per call."""
    import openai

    started = time.monotonic()
    for secret in sample:
        client = openai.OpenAI(api_key=secret, base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
        client.models.list()
        client.close()
    return len(sample) / (time.monotonic() - started)


def process_tree_peak_rss(pid):
    """VmHWM (peak resident set, KiB) of a process and its direct children."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    peaks = []
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]))
        except FileNotFoundError:
            pass
    return peaks


if __name__ == "__main__":
    main()
