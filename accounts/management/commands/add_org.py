"""`manage.py add_org`: register an organization from the command line."""

from django.core.management.base import CommandError
from django.db import transaction

from accounts.forms import OrganizationForm
from console.leakguard import GuardedCommand


def form_errors(form, options):
    """The form's messages, one line each, prefixed by the option that set the field."""
    lines = []
    for field, messages in form.errors.items():
        where = "" if field == "__all__" else f"{options.get(field, field)}: "
        lines.extend(f"  {where}{message}" for message in messages)
    return "\n".join(lines)


# Form field → the option that sets it, so an error names what the user typed.
OPTIONS = {
    "name": "--name",
    "slug": "--slug",
    "openai_org_id": "--openai-org-id",
    "rotation_policy_days": "--rotation-days",
    "monthly_budget_usd": "--budget",
    "alert_emails": "--alert-emails",
    "alert_webhook_url": "--alert-webhook-url",
}


class Command(GuardedCommand):
    help = "Register an OpenAI organization. Validates like the admin; changes nothing on error."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="Display name, e.g. “Acme”.")
        parser.add_argument("--slug", required=True, help="Short unique handle used by the other commands.")
        parser.add_argument("--openai-org-id", default="", help="org-… from the OpenAI dashboard.")
        parser.add_argument("--rotation-days", default="90", help="Rotation policy in days (default 90).")
        parser.add_argument("--budget", default="", help="Monthly budget in USD, e.g. 100.00.")
        parser.add_argument("--alert-emails", default="", help="Comma-separated addresses for alerts.")
        parser.add_argument("--alert-webhook-url", default="", help="https:// URL that receives alerts.")

    def handle(self, *args, **options):
        form = OrganizationForm(
            data={
                "name": options["name"],
                "slug": options["slug"],
                "openai_org_id": options["openai_org_id"],
                "rotation_policy_days": options["rotation_days"],
                "monthly_budget_usd": options["budget"],
                "alert_emails": options["alert_emails"],
                "alert_webhook_url": options["alert_webhook_url"],
            }
        )
        if not form.is_valid():
            raise CommandError("Organization not created:\n" + form_errors(form, OPTIONS))
        with transaction.atomic():
            org = form.save_and_record("cli:add_org")
        self.stdout.write(f"Created organization “{org.name}” (slug {org.slug}, id {org.pk}).")
