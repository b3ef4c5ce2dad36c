"""The one form per organization and project: the admin and the `add_org` /
`add_project` commands both use them, so both validate and audit alike."""

from .audit import AuditedForm
from .models import Organization, Project


class OrganizationForm(AuditedForm):
    class Meta:
        model = Organization
        fields = [
            "name",
            "slug",
            "openai_org_id",
            "rotation_policy_days",
            "monthly_budget_usd",
            "alert_emails",
            "alert_webhook_url",
        ]


class ProjectForm(AuditedForm):
    class Meta:
        model = Project
        fields = [
            "organization",
            "name",
            "openai_project_id",
            "environment",
            "tier",
            "monthly_budget_usd",
            "rotation_policy_days",
            "archived_at",
        ]
