#!/usr/bin/env python3
"""Write the local development `.env` that `make run` needs, once.

On the first run it creates `.env` (mode 0600, git-ignored) with DEBUG=true, a fresh
SECRET_KEY, an encryption master key, a separate fingerprint key, the sandbox API as
OPENAI_BASE_URL (on port $SANDBOX_PORT, default 8100) and on CONSOLE_ALLOWED_API_HOSTS,
and a password for the demo "admin" login. On later runs it only adds what is missing or empty: an existing value
is never overwritten, because replacing CONSOLE_ENCRYPTION_KEYS or
CONSOLE_FINGERPRINT_KEY would make every stored secret unreadable (or every fingerprint
wrong).

Standard library only: it runs before the virtualenv's packages matter. Prints the
names of the variables it wrote, never their values.

Usage: python scripts/bootstrap_env.py [path/to/.env]
"""

import base64
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# console/settings.py's default CONSOLE_ALLOWED_API_HOSTS (this script imports no Django).
DEFAULT_ALLOWED_API_HOSTS = ["api.openai.com", "*.openai.azure.com", "*.cognitiveservices.azure.com"]


def generate_master_key(version=1):
    # Same format as keys.crypto.generate_master_key; kept import-free so this script
    # needs neither Django nor the virtualenv.
    return f"v{version}:" + base64.urlsafe_b64encode(os.urandom(32)).decode()


def generate_password():
    # Letters and digits only: easy to copy from the terminal, 20 characters.
    return secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")[:20]


def sandbox_port():
    """The sandbox API's port: SANDBOX_PORT from the environment (`make run` passes it), else
    8100. `make run` also passes OPENAI_BASE_URL to what it starts, so the value written
    here matters only to commands run later by hand."""
    port = os.environ.get("SANDBOX_PORT", "").strip()
    return port if port.isdigit() else "8100"


def defaults():
    """The values a fresh .env gets, in the order they are written."""
    return {
        "DEBUG": "true",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "CONSOLE_ENCRYPTION_KEYS": generate_master_key(1),
        "CONSOLE_FINGERPRINT_KEY": secrets.token_urlsafe(32),
        "OPENAI_BASE_URL": f"http://127.0.0.1:{sandbox_port()}/v1",
        # The settings' default allow-list plus the sandbox: `make run` gives this to what it
        # starts anyway, but a command run by hand (`.venv/bin/python manage.py probe_keys`)
        # reads only .env, and without it every demo key would probe `destination_refused`.
        "CONSOLE_ALLOWED_API_HOSTS": ",".join([*DEFAULT_ALLOWED_API_HOSTS, f"127.0.0.1:{sandbox_port()}"]),
        "CONSOLE_DEMO_ADMIN_PASSWORD": generate_password(),
        # Alert emails of the demo go to the worker's log, not to an SMTP server that is
        # not there (set a real smtp:// URL to send them).
        "EMAIL_URL": "consolemail://",
    }


def read_env(path):
    """{name: value} for the KEY=VALUE lines of an env file (comments ignored)."""
    values = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.split("=", 1)
        values[name.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


def missing_entries(existing, wanted):
    """The entries of `wanted` that `existing` lacks or holds empty."""
    return {name: value for name, value in wanted.items() if not existing.get(name)}


def bootstrap(path):
    """Create or complete the env file at `path`; returns the names written."""
    existing = read_env(path)
    to_write = missing_entries(existing, defaults())
    if not to_write:
        return []
    lines = (
        path.read_text().splitlines()
        if path.is_file()
        else [
            "# Local development settings written by `make run` (scripts/bootstrap_env.py).",
            "# Git-ignored. Keep CONSOLE_ENCRYPTION_KEYS and CONSOLE_FINGERPRINT_KEY: without",
            "# them the secrets stored in db.sqlite3 cannot be read.",
        ]
    )
    # A name present with an empty value (copied from .env.example) is filled in place.
    filled = set()
    for i, line in enumerate(lines):
        name = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        if name in to_write and name not in filled:
            lines[i] = f"{name}={to_write[name]}"
            filled.add(name)
    lines += [f"{name}={value}" for name, value in to_write.items() if name not in filled]
    # Create with 0600 before writing anything secret into it.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return list(to_write)


def main(argv):
    path = Path(argv[1]) if len(argv) > 1 else ROOT / ".env"
    written = bootstrap(path)
    if written:
        print(f"{path}: wrote {', '.join(written)}")
    else:
        print(f"{path}: already complete, left unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
