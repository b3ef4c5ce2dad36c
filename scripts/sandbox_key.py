#!/usr/bin/env python3
"""Make a new key that the running sandbox API accepts, for trying `add_key` on the demo.

    scripts/sandbox_key.py | .venv/bin/python manage.py add_key --org acme --project Chatbot \
        --name "chatbot prod" --secret-stdin

A command-line walk through the README needs a secret that probes as OK, and the only
API that will say OK to a made-up key is the local sandbox that `make run` started. This
generates a key of the asked-for shape at run time (keys/formats.py: nothing key-shaped
is ever written in the repository), registers it with the sandbox under a fault plan
(`POST /_sandbox/keys`, docs/sandbox.md) and writes it to stdout, for a pipe. It refuses
to print it to a terminal: like every secret here it goes from one program to the next,
never onto a screen or into scrollback.

The sandbox is the one `.env` points OPENAI_BASE_URL at (what `make run` wrote), unless
OPENAI_BASE_URL or --sandbox-url says otherwise. Standard library only, plus the
dependency-free keys/formats.py.

Usage: scripts/sandbox_key.py [--kind project|service_account|admin] [--fault healthy|…]
                              [--project proj_…] [--sandbox-url http://127.0.0.1:8100]
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keys import formats  # noqa: E402  (after the path: this script runs from anywhere)

KINDS = {"project": formats.PROJECT, "service_account": formats.SERVICE_ACCOUNT, "admin": formats.ADMIN}


def env_file_value(name):
    """NAME's value in the project's .env, or ""; the file is never sourced."""
    path = Path(os.environ.get("CONSOLE_ENV_FILE") or ROOT / ".env")
    if not path.is_file():
        return ""
    value = ""
    for line in path.read_text().splitlines():
        if line.strip().startswith(f"{name}="):
            value = line.split("=", 1)[1].strip().strip("'\"")
    return value


def sandbox_root(url):
    """http://127.0.0.1:8100 from http://127.0.0.1:8100/v1 (or from the root itself)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit(f"{url} is not a local sandbox (http on a loopback address).")
    return f"{parts.scheme}://{parts.netloc}"


def register(root, secret, project, fault):
    body = json.dumps({"key": secret, "project": project, "fault": fault}).encode()
    request = urllib.request.Request(
        f"{root}/_sandbox/keys", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise SystemExit(f"The sandbox refused the key: HTTP {error.code} {error.read().decode()[:200]}") from None
    except OSError as error:
        raise SystemExit(f"No sandbox API at {root} ({error}): start it with `make run`.") from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=sorted(KINDS), default="project")
    parser.add_argument("--fault", default="healthy", help="The sandbox fault plan (docs/sandbox.md).")
    parser.add_argument("--project", default="proj_default", help="The sandbox project whose rate limit it shares.")
    parser.add_argument("--sandbox-url", help="Default: OPENAI_BASE_URL from the environment, else from .env.")
    args = parser.parse_args(argv)
    if sys.stdout.isatty():
        parser.exit(2, "Pipe it into a command (… | .venv/bin/python manage.py add_key … --secret-stdin).\n")
    url = args.sandbox_url or os.environ.get("OPENAI_BASE_URL") or env_file_value("OPENAI_BASE_URL")
    root = sandbox_root(url or "http://127.0.0.1:8100")
    secret = formats.generate(KINDS[args.kind])
    answer = register(root, secret, args.project, args.fault)
    print(f"Registered {answer.get('hint', 'a key')} with the sandbox at {root} ({args.fault}).", file=sys.stderr)
    sys.stdout.write(secret + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
