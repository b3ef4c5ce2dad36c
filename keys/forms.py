"""The one form that registers or edits an API key: the admin and the `add_key` command
both use it, so both give the same validation and the same messages."""

from django import forms
from django.core.exceptions import ValidationError
from django.views.decorators.debug import sensitive_variables

from .models import ApiKey


class ApiKeyForm(forms.ModelForm):
    # Write-only: never rendered back (render_value=False), blank on change keeps the
    # current secret.
    secret = forms.CharField(
        label="Secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Paste the key. It is encrypted at once and never shown again; "
        "only its hint (e.g. sk-proj-…Ab3d) is. Leave blank to keep the current secret.",
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
        if self.instance._state.adding and not cleaned.get("secret"):
            self.add_error("secret", "Enter the API key.")
        return cleaned

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
