"""The one form that registers or edits an API key, and the one path that saves it.

The admin (the key page and the key rows on project and organization pages), the
`add_key` command and the demo loader all use ApiKeyForm and save through
`save_and_record(actor)`: validate, encrypt, save, record the audit event, and queue the
first probe — so all of them give the same messages and leave the same trail.

Where a key is sent (provider, base URL, Azure endpoint) is part of its secret: it is
bound into the ciphertext, and changing it requires pasting the secret again, as
Django's change-password view asks for the old password.
"""

from django import forms
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.timezone import now
from django.views.decorators.debug import sensitive_variables

from accounts.audit import AuditedForm, field_changes, record_created, record_updated
from accounts.models import AuditEvent
from console.leakguard import refuse_key_shaped, refuse_unsafe_text

from . import rotation, tasks
from .models import ApiKey, KeyAction

REPASTE = "Changing where this key is sent requires pasting its secret again in the Secret field."
USE_ROTATE = (
    "To replace this key's secret, use “Rotate key”: the new secret is probed first and the old one "
    "keeps working for the grace period. Paste a secret here only when changing where the key is sent."
)
CHANGE_HELP = (
    "Only when changing where this key is sent (provider, base URL, Azure endpoint): paste its secret "
    "again. To replace the secret, use “Rotate key”. Leave blank to keep the current secret."
)


class ApiKeyForm(AuditedForm):
    # Write-only: never rendered back (render_value=False), blank on change keeps the
    # current secret.
    secret = forms.CharField(
        label="Secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Paste the key (sk-proj-…, sk-svcacct-…, sk-admin-… or an Azure key). It is encrypted at once "
        "and never shown again; only its hint (e.g. sk-proj-…Ab3d) is. Its first probe is queued when you save.",
    )

    class Meta:
        model = ApiKey
        fields = [
            "organization",
            "project",
            "name",
            "kind",
            "provider",
            "secret",
            "base_url",
            "azure_endpoint",
            "azure_api_version",
            "upstream_key_id",
            "owner",
            "issued_at",
            "expires_at",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Set by save_and_record once the transaction commits: True when a worker was
        # asked to probe the key at once, False when the next sweep will (no broker).
        self.first_probe_queued = None
        if not self.instance._state.adding and "secret" in self.fields:
            self.fields["secret"].help_text = CHANGE_HELP
        if "organization" in self.fields:
            self.fields["organization"].required = False
            self.fields[
                "organization"
            ].help_text = "Taken from the project when one is chosen; required for admin keys."

    def clean(self):
        cleaned = super().clean()
        project = cleaned.get("project")
        if project and not cleaned.get("organization"):
            cleaned["organization"] = project.organization
        if not cleaned.get("organization") and not self.instance.organization_id and "organization" in self.fields:
            self.add_error("organization", "Choose the organization (or a project, which implies it).")
        if not self.instance._state.adding and self.instance.revoked_at is not None and cleaned.get("secret"):
            self.add_error("secret", rotation.RotationRefused.REVOKED)
        if self.instance._state.adding and not cleaned.get("secret"):
            self.add_error("secret", "Enter the API key.")
        if not self.instance._state.adding and not cleaned.get("secret"):
            for name in self.destination_changes():
                self.add_error(name if name in self.fields else None, REPASTE)
        if (
            not self.instance._state.adding
            and self.instance.revoked_at is None
            and cleaned.get("secret")
            and not self.destination_changes()
        ):
            # A new secret goes through the verified rotation (keys/rotation.py), never
            # around it: probed first, the old one kept for the grace period.
            self.add_error("secret", USE_ROTATE)
        return cleaned

    def destination_changes(self):
        """Names of the destination fields this form changes on an existing key."""
        return [name for name in ApiKey.destination_fields if name in self.changed_data]

    @sensitive_variables("secret")
    def _post_clean(self):
        super()._post_clean()
        secret = self.cleaned_data.get("secret")
        if not secret or self.has_error("kind") or self.has_error("provider"):
            return
        try:
            self.instance.set_secret(secret)
            self.instance.validate_unique()
        except ValidationError as e:
            self._update_errors(e)

    def secret_changed(self):
        return bool(self.cleaned_data.get("secret"))

    def save_and_record(self, actor):
        """Save the key and record it: "key.created", or "key.secret_replaced" and/or
        "key.updated" with each changed field's old and new value (destination changes
        included; the secret only as replaced). A new key or a new secret is made due and
        its first probe queued once the transaction commits; if no broker answers, the
        key stays due and the next sweep probes it (see `first_probe_queued`)."""
        key = self.instance
        adding = key._state.adding
        replaced = not adding and self.secret_changed()
        changes = {} if adding else field_changes(self, exclude=["secret"])
        old_hint, old_fingerprint = (
            ("", "") if adding else ApiKey.objects.values_list("hint", "fingerprint").get(pk=key.pk)
        )
        # The same secret pasted again (for a new destination) is re-bound, not rotated:
        # the rotation clock does not restart.
        rotated = replaced and key.fingerprint != old_fingerprint
        if rotated:
            key.rotated_at = now()
        key = self.save()
        # The key's history (KeyEvent) starts at its registration.
        if adding:
            rotation.record_event(key, KeyAction.REGISTERED, actor, new_hint=key.hint)
        elif rotated:
            rotation.record_event(
                key,
                KeyAction.ROTATED,
                actor,
                at=key.rotated_at,
                old_hint=old_hint,
                new_hint=key.hint,
                reason="Secret replaced on the key's page with a new destination (no grace period).",
            )
        if adding:
            record_created(actor, key)
        else:
            if replaced:
                AuditEvent.record(actor, "key.secret_replaced", key, **key.audit_details())
            record_updated(actor, key, changes, hint=key.hint)
        if adding or replaced:
            self.queue_first_probe(key)
        return key

    def queue_first_probe(self, key):
        key.make_due()
        key_id = str(key.pk)

        def enqueue():
            self.first_probe_queued = tasks.enqueue_probes([key_id]) > 0

        transaction.on_commit(enqueue)


def first_probe_message(form):
    """What to tell a person after saving a key through `form`."""
    if form.first_probe_queued is None:
        return "Its first probe will be queued when this transaction commits."
    if form.first_probe_queued:
        return "Its first probe is queued."
    return "No worker queue answered: its first probe will come with the next sweep."


class RotateForm(forms.Form):
    """The Rotate page: the new secret (write-only) and, optionally, its upstream id.
    Validated like a registration here; probed by keys.rotation.rotate."""

    secret = forms.CharField(
        label="New secret",
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Probed before it replaces the current secret; never shown again, only its hint.",
    )
    upstream_key_id = forms.CharField(
        label="Upstream key id of the new secret",
        required=False,
        max_length=100,
        validators=[refuse_key_shaped, refuse_unsafe_text],
        help_text="key_… or svc_acct_…, if you know it: it lets the console delete this secret upstream later.",
    )

    def __init__(self, key, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.key = key

    @sensitive_variables("secret")
    def clean_secret(self):
        secret = self.cleaned_data["secret"]
        try:
            rotation.prepare(self.key, secret)
        except rotation.RotationRefused as e:
            raise ValidationError(str(e)) from None
        return secret


class RevokeForm(forms.Form):
    """The Revoke page: a required reason, and whether to delete the key upstream too
    (offered only when the organization's admin key and the key's upstream id allow it)."""

    reason = forms.CharField(
        max_length=300,
        validators=[refuse_key_shaped, refuse_unsafe_text],
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Kept in the key's history and the audit log.",
    )
    delete_upstream = forms.BooleanField(
        label="Also delete it upstream",
        required=False,
        help_text="With the organization's admin key, through the Administration API.",
    )

    def __init__(self, can_delete_upstream, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not can_delete_upstream:
            del self.fields["delete_upstream"]
