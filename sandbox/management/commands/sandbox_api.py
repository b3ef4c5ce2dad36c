"""Serve the sandbox API: `python manage.py sandbox_api --port 8100 [--host 127.0.0.1] [--latency-ms 0]`."""

import ipaddress

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand

from sandbox.app import build_app


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Command(BaseCommand):
    help = "Run the local OpenAI-compatible sandbox API (in-memory state, fault plans per key)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=settings.SANDBOX_PORT)
        parser.add_argument("--host", default="127.0.0.1", help="Bind address (loopback by default).")
        parser.add_argument("--latency-ms", type=int, default=0, help="Latency added to every API request.")

    def handle(self, *args, host, port, latency_ms, **options):
        if not is_loopback(host):
            # The control API has no authentication: anyone who reaches it can register keys.
            self.stderr.write(self.style.WARNING(f"Binding to {host}: the unauthenticated control API is exposed."))
        self.stdout.write(f"Sandbox API on http://{host}:{port} (OpenAI base URL http://{host}:{port}/v1)")
        self.stdout.flush()
        uvicorn.run(
            build_app(latency_ms=latency_ms),
            host=host,
            port=port,
            http="h11",  # DropConnection relies on h11's request cycle exposing its transport
            lifespan="off",
            access_log=False,  # request lines would carry nothing secret, but there is no need for them
            log_level="warning",
            timeout_graceful_shutdown=2,  # hanging requests must not hold a shutdown open
        )
