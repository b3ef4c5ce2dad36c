"""Token authentication for the REST API: `Authorization: Bearer <token>`, nothing else.

No session or cookie authentication, so CSRF does not apply: a browser never sends the
header by itself. For each call, in order:

1. the token is looked up by its SHA-256 (api/models.py) with its user, in one query;
2. unknown → 401. Known: the call is counted against the token's rate limit (429 with
   Retry-After when over) and, from here on, audited with the token's id
   (api/call_audit.py);
3. revoked, expired, or its user no longer active staff → 401;
4. the user's current permissions must include the endpoint's (`TokenAuth(perms)`) →
   else 403: a security reviewer's token reads and never writes. Checked before the
   body is read, so a refused write is refused whatever it sends.

The header's value is never logged (ninja's HttpBearer logs it under DEBUG; this class
does not).
"""

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from ninja.security import HttpBearer

from . import ratelimit
from .errors import ApiError
from .models import ApiToken, token_hash


class TokenAuth(HttpBearer):
    def __init__(self, *perms):
        super().__init__()
        self.perms = perms

    def __call__(self, request):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > 200:
            return None
        return self.authenticate(request, token)

    def authenticate(self, request, token):
        now = timezone.now()
        found = ApiToken.objects.select_related("user").filter(token_hash=token_hash(token)).first()
        if found is None:
            return None
        request.api_token = found
        verdict = ratelimit.hit(found.pk, now.timestamp())
        if not verdict.allowed:
            # Audit the first refusal of a window only: a runaway loop costs no writes.
            request.api_call_unaudited = verdict.count > ratelimit_limit() + 1
            raise ApiError(
                429,
                f"More than {ratelimit_limit()} calls in a minute with this token; retry in {verdict.retry_after} s.",
                headers={"Retry-After": str(verdict.retry_after)},
            )
        user = found.user
        if not found.is_usable(now) or not user.is_active or not user.is_staff:
            return None
        if self.perms and not user.has_perms(self.perms):
            raise ApiError(403, "This token's user may not do this (their role reads only, or lacks this right).")
        touch(found, now)
        return found


def ratelimit_limit():
    return settings.API_RATE_LIMIT_PER_MINUTE


def touch(token, now):
    """Record the token's use, at most once per LAST_USED_RESOLUTION_SECONDS."""
    step = timedelta(seconds=ApiToken.LAST_USED_RESOLUTION_SECONDS)
    if token.last_used_at is not None and token.last_used_at > now - step:
        return
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    token.last_used_at = now
