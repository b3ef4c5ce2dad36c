"""Per-project request budget for probes, shared by every worker.

OpenAI limits requests per project, so probes for one project must never use more than
a share of its RPM, however many workers run. A sliding one-minute window per project
lives in Redis (a sorted set of request times, checked and added to by one Lua script,
so the check-and-take is atomic across processes). Without Redis (the embedded
`make run` set-up) a process-local window does the same job for a single worker.

If Redis fails while a batch runs, the batch does not stop: it carries on under a
process-local window (this worker's share only) and logs a warning once. Probes go on;
while Redis is down, several workers may together exceed a project's share.
"""

import asyncio
import logging
import time
import uuid
from collections import defaultdict, deque

from django.conf import settings

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60

# KEYS[1] = window key; ARGV = limit, window (s), member id. Uses the server's clock so
# every worker agrees. Returns 0 when a request may go now, else seconds to wait (as a
# string, since Lua numbers become integers on the way out).
SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
  return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(math.max(tonumber(oldest[2]) + window - now, 0.001))
"""


class RedisLimiter:
    def __init__(self, url):
        import redis.asyncio

        self.redis = redis.asyncio.from_url(url)
        self.script = self.redis.register_script(SLIDING_WINDOW)

    async def try_acquire(self, project_id, per_minute):
        wait = await self.script(
            keys=[f"console:probe-window:{project_id}"], args=[int(per_minute), WINDOW_SECONDS, uuid.uuid4().hex]
        )
        return float(wait)

    async def aclose(self):
        await self.redis.aclose()


class LocalLimiter:
    """The same sliding window in one process's memory."""

    def __init__(self):
        self.windows = defaultdict(deque)

    async def try_acquire(self, project_id, per_minute):
        now = time.monotonic()
        window = self.windows[project_id]
        while window and window[0] <= now - WINDOW_SECONDS:
            window.popleft()
        if len(window) < int(per_minute):
            window.append(now)
            return 0.0
        return max(window[0] + WINDOW_SECONDS - now, 0.001)

    async def aclose(self):
        pass


class FallbackLimiter:
    """The shared limiter until it fails once, then a process-local window."""

    def __init__(self, primary):
        self.primary, self.local, self.failed = primary, LocalLimiter(), False

    async def try_acquire(self, project_id, per_minute):
        if not self.failed:
            try:
                return await self.primary.try_acquire(project_id, per_minute)
            except Exception as e:  # noqa: BLE001 — any Redis trouble: connection, timeout, script
                self.failed = True
                log.warning("probe limiter: Redis failed (%s); this batch uses a local window", type(e).__name__)
        return await self.local.try_acquire(project_id, per_minute)

    async def aclose(self):
        try:
            await self.primary.aclose()
        except Exception:  # noqa: BLE001 — closing a dead connection must not fail the batch
            pass


def make_limiter():
    return FallbackLimiter(RedisLimiter(settings.REDIS_URL)) if settings.REDIS_URL else LocalLimiter()


async def acquire(limiter, project_id, per_minute, max_wait):
    """Wait for a slot in the project's window. True when granted; False when it would
    take longer than `max_wait` seconds (the caller defers the probe)."""
    waited = 0.0
    while True:
        wait = await limiter.try_acquire(project_id, max(int(per_minute), 1))
        if wait <= 0:
            return True
        if waited + wait > max_wait:
            return False
        await asyncio.sleep(wait)
        waited += wait
