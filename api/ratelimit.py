"""Per-token rate limit: a fixed one-minute window counted in Django's cache (Redis in
production, so every web process shares the count).

The window is the current wall-clock minute; the first call of a window creates its
counter (cache.add) and every call increments it (cache.incr, atomic in Redis). Calls past
API_RATE_LIMIT_PER_MINUTE get 429 with Retry-After: the seconds until the next window.

If the cache cannot be reached, calls are let through with a warning: the limit protects
the console from a runaway script; it is not what keeps a token's rights in check.
"""

import logging
import math
from typing import NamedTuple

from django.conf import settings
from django.core.cache import cache

log = logging.getLogger(__name__)
WINDOW_SECONDS = 60


class Verdict(NamedTuple):
    allowed: bool
    count: int  # calls in this window, this one included
    retry_after: int  # seconds until the window ends (≥ 1)


def hit(token_id, now_ts, limit=None):
    """Count a call of token `token_id` at Unix time `now_ts`; returns a Verdict."""
    limit = settings.API_RATE_LIMIT_PER_MINUTE if limit is None else limit
    window = int(now_ts // WINDOW_SECONDS)
    retry_after = max(math.ceil((window + 1) * WINDOW_SECONDS - now_ts), 1)
    key = f"api:rate:{token_id}:{window}"
    try:
        cache.add(key, 0, timeout=WINDOW_SECONDS * 2)
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=WINDOW_SECONDS * 2)
        count = 1
    except Exception as e:  # noqa: BLE001 — whatever the cache backend raises when it is down
        log.warning("API rate limit not applied: the cache is unreachable (%s)", type(e).__name__)
        return Verdict(True, 0, retry_after)
    return Verdict(count <= limit, count, retry_after)
