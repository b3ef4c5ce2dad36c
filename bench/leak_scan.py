"""Benchmark: `manage.py scan_leaks` over ~100 MB of generated text.

    python -m bench.leak_scan                  # 100 MB
    python -m bench.leak_scan --megabytes 10   # while developing
    python -m bench.leak_scan --git-history    # the same tree committed to a git repository too

Writes a temporary tree of text files (source-like lines with look-alikes: "task-", "disk-",
sk-learn names, SHA-1 and SHA-256 digests, UUIDs, Azure endpoints without keys) of about
--file-kb each, plus one file of 1/10 of the total (read in blocks), with a few keys
planted at run time: one of each OpenAI shape, an Azure key next to an endpoint and one
far from any. One planted key is registered in a dedicated PostgreSQL database
(console_bench_leaks) so the run also looks up and flags it. Then it times the command
in-process and prints MB/s and the total seconds, and checks what was found.
"""

import argparse
import base64
import io
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORDS = (
    "task- disk- risk- desk- ask- mask- sk-learn import return def class self value config request "
    "response model token limit organization project rotation budget usage endpoint azure openai "
    "json yaml docker kubernetes deploy service account admin key secret hint probe sweep batch"
).split()


def line_pool(rng, n=20000):
    pool = []
    for i in range(n):
        kind = i % 10
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
        if kind == 0:
            pool.append(f"    digest = '{rng.getrandbits(160):040x}'  # sha1, {words}")
        elif kind == 1:
            pool.append(f"sha256:{rng.getrandbits(256):064x} {words}")
        elif kind == 2:
            u = f"{rng.getrandbits(128):032x}"
            pool.append(f"id = '{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}'  # {words.replace(' ', '-')}")
        elif kind == 3:
            pool.append(f"from sklearn.pipeline import make_pipeline  # sk-learn-pipeline-{rng.randint(0, 999)}")
        else:
            pool.append(f"    {words} = {rng.randint(0, 10**9)}")
    # A few Azure endpoints with no key near them (the Azure rule has to look, and find nothing).
    for i in range(20):
        pool[i * 997] = f"AZURE_OPENAI_ENDPOINT=https://res-{i}.openai.azure.com/"
    return pool


def write_tree(root, megabytes, file_kb, seed=7):
    """Write the tree; returns (bytes written, {name: secret}) of the planted keys."""
    from keys import formats

    rng = random.Random(seed)
    pool = line_pool(rng)
    total_target = megabytes * 1_000_000
    big_target = total_target // 10
    planted = {
        "project": formats.generate(formats.PROJECT),
        "service_account": formats.generate(formats.SERVICE_ACCOUNT),
        "admin": formats.generate(formats.ADMIN),
        "legacy": formats.generate(formats.LEGACY),
        "azure_near": formats.generate(formats.AZURE),
        "azure_far": formats.generate(formats.AZURE),
    }
    plants = {
        7: f'OPENAI_API_KEY = "{planted["project"]}"',
        19: f"export OPENAI_KEY={planted['service_account']}",
        31: f"admin: {planted['admin']}",
        43: f"legacy = '{planted['legacy']}'",
        55: f"endpoint: https://acme.openai.azure.com\napi_key: {planted['azure_near']}",
        67: f"cache_key: {planted['azure_far']}",
    }
    written, n = 0, 0
    directory = root
    while written < total_target:
        if n % 100 == 0:
            directory = root / f"pkg{n // 100:03d}"
            directory.mkdir()
        size = big_target if n == 3 else file_kb * 1000
        buffer = io.StringIO()
        length = 0
        while length < size:
            line = pool[rng.randrange(len(pool))]
            buffer.write(line)
            buffer.write("\n")
            length += len(line) + 1
        text = buffer.getvalue()
        if n in plants:
            cut = text.find("\n", len(text) // 2) + 1
            text = text[:cut] + plants[n] + "\n" + text[cut:]
        data = text.encode()
        (directory / f"module_{n:05d}.py").write_bytes(data)
        written += len(data)
        n += 1
    return written, n, planted


def setup_django(database):
    os.environ["CONSOLE_ENV_FILE"] = os.devnull
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{database}"
    os.environ["REDIS_URL"] = ""
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ.setdefault("DEBUG", "false")
    os.environ.setdefault("SECRET_KEY", "bench-" + os.urandom(24).hex())
    os.environ.setdefault("CONSOLE_ENCRYPTION_KEYS", "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode())
    os.environ.setdefault("CONSOLE_FINGERPRINT_KEY", secrets.token_urlsafe(32))
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def register(secret):
    from accounts.models import Organization, Project
    from keys.models import ApiKey

    org = Organization.objects.create(name="Bench", slug="bench")
    project = Project.objects.create(organization=org, name="Bench project")
    key = ApiKey(organization=org, project=project, name="bench key", owner="bench-team")
    key.set_secret(secret)
    key.full_clean()
    key.save()
    return key


def commit(root):
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", "-C", str(root), *args], env=env, check=True)


def baseline(root, megabytes):
    """MB/s of the naive scan the prefilter avoids: every OpenAI shape and the Azure shape
    searched over every byte of the first `megabytes` of files."""
    from keys import leakscan

    patterns = [pattern for _, pattern in leakscan._OPENAI_SHAPES] + [leakscan._AZURE_SHAPE]
    done, found = 0, 0
    started = time.perf_counter()
    for path in sorted(root.rglob("module_*.py")):
        data = path.read_bytes()
        for pattern in patterns:
            found += sum(1 for _ in pattern.finditer(data))
        done += len(data)
        if done >= megabytes * 1_000_000:
            break
    return done / 1e6 / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--file-kb", type=int, default=64, help="Size of the ordinary files.")
    parser.add_argument("--git-history", action="store_true", help="Commit the tree and scan its history too.")
    parser.add_argument("--baseline-mb", type=int, default=10, help="MB for the no-prefilter baseline.")
    parser.add_argument("--database", default="console_bench_leaks")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    setup_django(args.database)
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from keys.models import ApiKey

    root = Path(tempfile.mkdtemp(prefix="leakscan-bench-"))
    try:
        started = time.perf_counter()
        written, files, planted = write_tree(root, args.megabytes, args.file_kb)
        generated = time.perf_counter() - started
        if args.git_history:
            commit(root)
        key = register(planted["project"])

        out, err = io.StringIO(), io.StringIO()
        command = ["scan_leaks", str(root), "--format", "json"] + (["--git-history"] if args.git_history else [])
        started = time.perf_counter()
        try:
            call_command(*command, stdout=out, stderr=err)
            exit_code = 0
        except CommandError as e:
            exit_code = e.returncode
        elapsed = time.perf_counter() - started

        report = json.loads(out.getvalue())
        kinds = sorted(f["kind"] for f in report["findings"])
        scanned = report["summary"]["bytes"]
        for secret in planted.values():
            assert secret not in out.getvalue() + err.getvalue(), "a secret in the output"
        key.refresh_from_db()
        print(f"text generated            {written / 1e6:.1f} MB in {files} files ({generated:.1f} s)")
        print(f"bytes scanned             {scanned / 1e6:.1f} MB{' (tree + history)' if args.git_history else ''}")
        print(f"scan wall time            {elapsed:.2f} s  (command, in-process: walk, read, match, DB)")
        print(f"throughput                {scanned / 1e6 / elapsed:.1f} MB/s")
        print(f"findings                  {len(kinds)}: {', '.join(kinds)}")
        print(f"registered keys leaked    {report['summary']['registered_keys']} (exit code {exit_code})")
        print(f"planted key flagged       {'yes' if getattr(key, 'leaked_at', None) else 'no'}")
        print(f"Python                    {sys.version.split()[0]}, {os.cpu_count()} cores")
        rate = baseline(root, args.baseline_mb)
        print(f"no-prefilter baseline     {rate:.1f} MB/s  (every pattern over every byte, {args.baseline_mb} MB)")
        # With --git-history the committed files are in both the tree and history: reported once.
        expected = ["admin", "azure", "legacy", "project", "service_account"]
        if kinds != expected:
            print(f"UNEXPECTED findings (wanted {expected})", file=sys.stderr)
            sys.exit(1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        ApiKey.objects.all().delete()


if __name__ == "__main__":
    main()
