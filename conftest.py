"""Root conftest: fails loudly when a service the suite needs is unreachable."""

import os
import socket

import pytest


def _reachable(host, port):
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def pytest_sessionstart(session):
    missing = []
    if not _reachable("127.0.0.1", 5432):
        missing.append(f"PostgreSQL on 127.0.0.1:5432 (DATABASE_URL={os.environ.get('DATABASE_URL')})")
    if not _reachable("127.0.0.1", 6379):
        missing.append(f"Redis on 127.0.0.1:6379 (REDIS_URL={os.environ.get('REDIS_URL')})")
    if missing:
        pytest.exit("The test suite needs: " + "; ".join(missing) + ". Start them (see README, Tests).", returncode=3)
