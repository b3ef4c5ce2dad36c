"""The form that makes an API token (for the user who submits it) or renames one."""

from django import forms
from django.utils.timezone import now

from accounts.audit import AuditedForm

from .models import ApiToken


class ApiTokenForm(AuditedForm):
    class Meta:
        model = ApiToken
        fields = ["name", "expires_at"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Set by save_and_record on a new token: the plaintext, for the one page that
        # shows it. Never saved, never put in a message (messages live in the session).
        self.plaintext = None

    def clean_expires_at(self):
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and self.instance._state.adding and expires_at <= now():
            raise forms.ValidationError("A new token must expire in the future (or leave it empty).")
        return expires_at

    def save_and_record(self, actor):
        """A new token belongs to `actor` and gets its secret here; "api_token.created"
        records its prefix, never the token."""
        if self.instance._state.adding:
            self.instance.user = actor
            self.plaintext = self.instance.issue()
        return super().save_and_record(actor)
