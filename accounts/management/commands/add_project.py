"""`manage.py add_project`: register a project of an organization from the command line."""

from django.core.management.base import CommandError
from django.db import transaction

from accounts.forms import ProjectForm
from accounts.models import Environment, Organization, Tier
from console.leakguard import GuardedCommand

from .add_org import form_errors

OPTIONS = {
    "organization": "--org",
    "name": "--name",
    "openai_project_id": "--openai-project-id",
    "environment": "--environment",
    "tier": "--tier",
    "monthly_budget_usd": "--budget",
    "rotation_policy_days": "--rotation-days",
}


class Command(GuardedCommand):
    help = "Register a project of an organization. Validates like the admin; changes nothing on error."

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Slug of the organization.")
        parser.add_argument("--name", required=True, help="Project name, unique within the organization.")
        parser.add_argument("--openai-project-id", default="", help="proj_… from the OpenAI dashboard.")
        parser.add_argument(
            "--environment", default=Environment.DEVELOPMENT, help="One of: " + ", ".join(Environment.values) + "."
        )
        parser.add_argument("--tier", default="", help="Usage tier by name, e.g. “Tier 1”.")
        parser.add_argument("--budget", default="", help="Monthly budget in USD.")
        parser.add_argument("--rotation-days", default="", help="Override of the organization's rotation policy.")

    def handle(self, *args, **options):
        org = Organization.objects.by_slug(options["org"])
        if org is None:
            raise CommandError(f"Project not created: no organization with slug “{options['org']}”.")
        tier = None
        if options["tier"]:
            tier = Tier.objects.filter(name__iexact=options["tier"]).first()
            if tier is None:
                names = ", ".join(f"“{t.name}”" for t in Tier.objects.all())
                raise CommandError(f"Project not created: no tier “{options['tier']}”. Known tiers: {names}.")
        form = ProjectForm(
            data={
                "organization": org.pk,
                "name": options["name"],
                "openai_project_id": options["openai_project_id"],
                "environment": options["environment"],
                "tier": tier.pk if tier else "",
                "monthly_budget_usd": options["budget"],
                "rotation_policy_days": options["rotation_days"],
                "archived_at": "",
            }
        )
        if not form.is_valid():
            raise CommandError("Project not created:\n" + form_errors(form, OPTIONS))
        with transaction.atomic():
            project = form.save_and_record("cli:add_project")
        self.stdout.write(f"Created project “{project}” (id {project.pk}).")
