"""API tokens: a user's credential for the REST API (api/endpoints.py).

A token is shown once, when it is made; the database keeps its first 8 characters (to
tell tokens apart in lists and the audit log) and the SHA-256 of the whole token, never
the token. SHA-256 rather than a slow password hash: a token is 40 random URL-safe
characters (240 bits), so there is nothing to guess that a slow hash would protect, and
every API call looks its token up by the hash in one indexed query.

A token has no rights of its own: each call is allowed what its user's groups allow at
that moment (a security reviewer's token reads only), and nothing once the user is no
longer active staff.
"""

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils.timezone import now
from django.views.decorators.debug import sensitive_variables

from console.leakguard import refuse_key_shaped, refuse_unsafe_text

TOKEN_PREFIX = "occ_"  # "OpenAI console credential": lets secret scanners recognise one
PREFIX_LENGTH = 8


def generate_token():
    """A new random token (plaintext): occ_ followed by 40 URL-safe characters."""
    return TOKEN_PREFIX + secrets.token_urlsafe(30)


def token_hash(token):
    """The hex SHA-256 of a token: what the database stores and looks up."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def usable(self, now):
        """Tokens neither revoked nor expired at `now`."""
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_tokens")
    name = models.CharField(
        max_length=100,
        validators=[refuse_key_shaped, refuse_unsafe_text],
        help_text="What uses this token, e.g. “CI: register keys”.",
    )
    prefix = models.CharField(max_length=PREFIX_LENGTH, editable=False, help_text="The token's first 8 characters.")
    token_hash = models.CharField(max_length=64, editable=False)
    created = models.DateTimeField(default=now)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires (revoke it instead).")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiTokenQuerySet.as_manager()

    # For the shared admin machinery: no lookup, filter or audit record touches the hash.
    secret_fields = ("token_hash",)
    audit_name = "api_token"

    # last_used_at is written at most this often per token, so a busy token costs no
    # UPDATE on most calls.
    LAST_USED_RESOLUTION_SECONDS = 60

    class Meta:
        verbose_name = "API token"
        ordering = ["-created"]
        constraints = [models.UniqueConstraint(fields=["token_hash"], name="api_apitoken_unique_hash")]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @sensitive_variables("token")
    def issue(self):
        """Give this unsaved token a fresh secret; returns the plaintext, which is never
        stored (only its prefix and hash are)."""
        token = generate_token()
        self.prefix = token[:PREFIX_LENGTH]
        self.token_hash = token_hash(token)
        return token

    def is_usable(self, now):
        """Pure: neither revoked nor expired at `now`."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or self.expires_at > now

    def state(self, now):
        """ "revoked", "expired" or "active" at `now`."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def audit_details(self):
        return {
            "prefix": self.prefix,
            "user": self.user.get_username() if self.user_id else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }
