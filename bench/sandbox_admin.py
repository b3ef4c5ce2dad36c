"""Benchmark: the sandbox's Administration API at organization-sync size.

    python -m bench.sandbox_admin --projects 500 --keys-per-project 100

Starts the sandbox API (sandbox/admin_api.py) in a subprocess, seeds one organization
through POST /_sandbox/admin twice — as explicit JSON (every project and key spelled out,
as a test would) and with `generate` — then walks everything through the official SDK
with limit=100: every project, then every project's keys. Prints the seed times, the
pages and requests/second of the walk, and the time of the first and the last page of
the largest list (a page must cost its limit, not its position).
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORG = "org-BenchAdmin00001"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=500)
    parser.add_argument("--keys-per-project", type=int, default=100)
    parser.add_argument("--port", type=int, default=8197)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    import openai

    from keys import formats
    from sandbox.control import SandboxControl

    server = start_sandbox(args.port)
    control = SandboxControl(f"http://127.0.0.1:{args.port}", timeout=300)
    try:
        if not control.wait_ready(timeout=30):
            sys.exit("The sandbox did not start.")
        admin = formats.generate(formats.ADMIN)
        # Admin calls draw from the admin key's project window like every call: the walk
        # makes about n + 1 requests, so the key gets more than Tier 1's 500 a minute.
        control.register(admin, organization=ORG, rpm=1_000_000)
        n, m = args.projects, args.keys_per_project
        print(f"Organization: {n} projects × {m} keys = {n * m:,} keys")

        explicit = {
            "users": [{"id": "user_bench", "role": "owner"}],
            "projects": [
                {
                    "id": f"proj_b{i:06d}",
                    "name": f"Project {i}",
                    "users": [{"id": "user_bench", "role": "owner"}],
                    "api_keys": [{"id": f"key_b{i:06d}k{j:04d}", "owner": {"user": "user_bench"}} for j in range(m)],
                }
                for i in range(n)
            ],
        }
        started = time.perf_counter()
        counts = control.seed_admin(ORG, **explicit)
        print(f"Seed as explicit JSON: {time.perf_counter() - started:.2f} s ({counts['api_keys']:,} keys)")
        started = time.perf_counter()
        counts = control.seed_admin(ORG, generate={"projects": n, "keys_per_project": m})
        print(f"Seed with generate:    {time.perf_counter() - started:.2f} s ({counts['api_keys']:,} keys)")

        sdk = openai.OpenAI(api_key="unused", admin_api_key=admin, base_url=control.openai_url, max_retries=0)
        org = sdk.admin.organization
        started = time.perf_counter()
        projects = [p.id for p in org.projects.list(limit=100)]
        keys = 0
        for project_id in projects:
            keys += sum(1 for _ in org.projects.api_keys.list(project_id, limit=100))
        walk = time.perf_counter() - started
        calls = control.admin_state(ORG)["calls"]
        pages = sum(calls.values())
        print(
            f"Walk with the SDK:     {walk:.2f} s, {len(projects)} projects, {keys:,} keys, "
            f"{pages} pages ({pages / walk:.0f} pages/s)"
        )
        assert len(projects) == n and keys == n * m, "the walk did not see everything"

        big = [{"id": "user_bench", "role": "owner"}]
        control.seed_admin(ORG, users=big, projects=[{"id": "proj_big", "users": big, "api_keys": [
            {"id": f"key_big{j:06d}", "owner": {"user": "user_bench"}} for j in range(n * m)]}])  # fmt: skip
        first = best_of(lambda: org.projects.api_keys.list("proj_big", limit=100))
        last = best_of(lambda: org.projects.api_keys.list("proj_big", limit=100, after=f"key_big{n * m - 101:06d}"))
        print(f"One project of {n * m:,} keys: first page {first * 1000:.1f} ms, last page {last * 1000:.1f} ms")
    finally:
        control.close()
        server.terminate()
        server.wait(timeout=10)


def best_of(call, times=5):
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def start_sandbox(port):
    code = (
        "import uvicorn; from sandbox.app import build_app; "
        f"uvicorn.run(build_app(), host='127.0.0.1', port={port}, log_level='warning', access_log=False)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL
    )


if __name__ == "__main__":
    main()
