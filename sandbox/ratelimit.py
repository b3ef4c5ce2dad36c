"""Per-project request counting over one-minute windows, and the headers it produces.

OpenAI limits apply per project, not per key: every key registered in one project draws
from the same window. A window opens with the project's first request and lasts a minute;
the x-ratelimit-reset-* headers count down to its end.
"""

import math
import time
from dataclasses import dataclass

WINDOW_SECONDS = 60.0


def go_duration(seconds):
    """Format a duration the way Go's time.Duration prints it, as OpenAI's headers do:
    `0s`, `12ms`, `1.5s`, `59.987s`, `6m0s`, `1h0m0s` (millisecond precision)."""
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass
class Snapshot:
    """The counter's state as one response reports it."""

    limit_requests: int
    limit_tokens: int
    remaining_requests: int
    remaining_tokens: int
    reset_requests: float  # seconds until the request count is back to the full limit
    reset_tokens: float

    def headers(self):
        return {
            "x-ratelimit-limit-requests": str(self.limit_requests),
            "x-ratelimit-limit-tokens": str(self.limit_tokens),
            "x-ratelimit-remaining-requests": str(self.remaining_requests),
            "x-ratelimit-remaining-tokens": str(self.remaining_tokens),
            "x-ratelimit-reset-requests": go_duration(self.reset_requests),
            "x-ratelimit-reset-tokens": go_duration(self.reset_tokens),
        }

    def retry_after(self):
        """Whole seconds until the window ends (at least 1), for the retry-after header."""
        return max(1, math.ceil(self.reset_requests))


class ProjectWindow:
    """One project's counter. Not thread-safe: the sandbox serves from one event loop and
    never awaits inside a method here."""

    def __init__(self, rpm, tpm, clock=time.monotonic):
        self.rpm = rpm
        self.tpm = tpm
        self.clock = clock
        self.started = None
        self.requests = 0
        self.tokens = 0

    def _roll(self, now):
        if self.started is None or now - self.started >= WINDOW_SECONDS:
            self.started = None
            self.requests = 0
            self.tokens = 0

    def take(self, tokens=0):
        """Count one request. Returns (allowed, snapshot): allowed is False when the window
        has no requests left, and a refused request is not counted."""
        now = self.clock()
        self._roll(now)
        if self.requests >= self.rpm:
            return False, self.snapshot(now)
        if self.started is None:
            self.started = now
        self.requests += 1
        self.tokens += tokens
        return True, self.snapshot(now)

    def snapshot(self, now=None):
        now = self.clock() if now is None else now
        self._roll(now)
        left = 0.0 if self.started is None else max(0.0, self.started + WINDOW_SECONDS - now)
        return Snapshot(
            limit_requests=self.rpm,
            limit_tokens=self.tpm,
            remaining_requests=max(0, self.rpm - self.requests),
            remaining_tokens=max(0, self.tpm - self.tokens),
            reset_requests=left if self.requests else 0.0,
            reset_tokens=left if self.tokens else 0.0,
        )
