"""Serve the sandbox API:
`python manage.py sandbox_api --port 8100 [--host 127.0.0.1] [--latency-ms 0] [--allow-remote]`."""

import ipaddress

import uvicorn
from django.conf import settings
from django.core.management.base import CommandError

from console.leakguard import GuardedCommand
from sandbox.app import build_app


def is_loopback(host):
    """True for `localhost` or a loopback address (127.0.0.0/8, ::1, with or without [])."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Command(GuardedCommand):
    help = "Run the local OpenAI-compatible sandbox API (in-memory state, fault plans per key)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=settings.SANDBOX_PORT)
        parser.add_argument("--host", default="127.0.0.1", help="Bind address (loopback by default).")
        parser.add_argument("--latency-ms", type=int, default=0, help="Latency added to every API request.")
        parser.add_argument(
            "--allow-remote",
            action="store_true",
            help="Allow a non-loopback --host. The control API has no authentication: anyone who "
            "reaches the port can register keys and read stats.",
        )

    def handle(self, *args, host, port, latency_ms, allow_remote, **options):
        # Refuse before anything binds: the control API has no authentication.
        if not is_loopback(host):
            if not allow_remote:
                raise CommandError(
                    f"Refusing to bind the sandbox API to {host}: its control API has no authentication. "
                    "Use a loopback address (127.0.0.1, ::1, localhost), or add --allow-remote if "
                    "exposing it is really intended."
                )
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
