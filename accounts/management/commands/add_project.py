"""`manage.py add_project`: register a project of an organization from the command line."""

from django import forms
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import AuditEvent, Environment, Organization, Project, Tier

from .add_org import form_errors


class ProjectForm(forms.ModelForm):
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
        ]


OPTIONS = {
    "organization": "--org",
    "name": "--name",
    "openai_project_id": "--openai-project-id",
    "environment": "--environment",
    "tier": "--tier",
    "monthly_budget_usd": "--budget",
    "rotation_policy_days": "--rotation-days",
}


class Command(BaseCommand):
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
        org = Organization.objects.filter(slug=options["org"]).first()
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
            }
        )
        if not form.is_valid():
            raise CommandError("Project not created:\n" + form_errors(form, OPTIONS))
        with transaction.atomic():
            project = form.save()
            AuditEvent.record("cli:add_project", "project.created", project, organization=org.slug)
        self.stdout.write(f"Created project “{project}” (id {project.pk}).")
