"""`manage.py add_key`: register an API key from the command line.

The secret comes from an environment variable (CONSOLE_NEW_KEY by default) or stdin,
never from argv: every user on the host can read a process's arguments (ps, /proc).
Validation is ApiKeyForm's, so the messages are the admin's.
"""

import getpass
import os
import sys

from django.core.management.base import CommandError
from django.db import IntegrityError, transaction
from django.utils.timezone import now

from accounts.models import Organization
from console.leakguard import GuardedCommand
from keys.forms import ApiKeyForm, first_probe_message
from keys.models import Kind, Provider

DEFAULT_SECRET_ENV = "CONSOLE_NEW_KEY"

ARGV_REFUSAL = (
    "Refusing an API key on the command line: argv is visible to other users in the process "
    "list (ps, /proc) and is kept in shell history. Put the key in the environment variable "
    f"{DEFAULT_SECRET_ENV} (or the one named by --secret-env), or pipe it in with --secret-stdin. "
    "If it was typed into a shared shell, consider it exposed and rotate it."
)

# Form field → the option that sets it, so an error names what the user typed.
OPTIONS = {
    "organization": "--org",
    "project": "--project",
    "name": "--name",
    "kind": "--kind",
    "provider": "--provider",
    "secret": "key",
    "base_url": "--base-url",
    "azure_endpoint": "--azure-endpoint",
    "azure_api_version": "--azure-api-version",
    "upstream_key_id": "--upstream-key-id",
    "owner": "--owner",
    "issued_at": "--issued-at",
    "expires_at": "--expires-at",
}


def form_errors(form):
    lines = []
    for field, messages in form.errors.items():
        where = "" if field == "__all__" else f"{OPTIONS.get(field, field)}: "
        lines.extend(f"  {where}{message}" for message in messages)
    return "\n".join(lines)


class Command(GuardedCommand):
    help = (
        "Register an API key. The secret is read from $CONSOLE_NEW_KEY (or --secret-env NAME) "
        "or from stdin (--secret-stdin), never from the command line."
    )
    stealth_options = ("stdin",)  # call_command(..., stdin=io.StringIO(...)) in tests
    # GuardedCommand refuses a key-shaped argument anywhere in argv; this says where it goes.
    argv_refusal = ARGV_REFUSAL

    def create_parser(self, prog_name, subcommand, **kwargs):
        # No abbreviations: "--secret=…" must not be taken for --secret-env or --secret-stdin.
        return super().create_parser(prog_name, subcommand, allow_abbrev=False, **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("--org", required=True, help="Slug of the organization.")
        parser.add_argument("--project", default="", help="Project name or its proj_… id (not for admin keys).")
        parser.add_argument("--name", required=True, help="A name people will recognise, e.g. “chatbot prod”.")
        parser.add_argument("--kind", default=Kind.PROJECT, help="project, service_account or admin.")
        parser.add_argument("--provider", default=Provider.OPENAI, help="openai or azure.")
        parser.add_argument("--azure-endpoint", default="", help="https://<resource>.openai.azure.com")
        parser.add_argument("--azure-api-version", default="", help="Azure API version (default from settings).")
        parser.add_argument("--base-url", default="", help="For OpenAI-compatible endpoints.")
        parser.add_argument("--owner", default="", help="Person or team responsible for the key.")
        parser.add_argument("--upstream-key-id", default="", help="key_… or svc_acct_… id upstream.")
        parser.add_argument("--issued-at", default="", help="ISO date/time the key was issued (default now).")
        parser.add_argument("--expires-at", default="", help="ISO date/time the key expires.")
        source = parser.add_mutually_exclusive_group()
        source.add_argument(
            "--secret-env",
            metavar="VAR",
            default=DEFAULT_SECRET_ENV,
            help=f"Name of the environment variable holding the key (default {DEFAULT_SECRET_ENV}).",
        )
        source.add_argument("--secret-stdin", action="store_true", help="Read the key from stdin.")

    def read_secret(self, options):
        if options["secret_stdin"]:
            stdin = options.get("stdin") or sys.stdin
            if stdin.isatty():
                return getpass.getpass("API key (not echoed): ")
            return stdin.read()
        name = options["secret_env"]
        secret = os.environ.get(name, "")
        if not secret.strip():
            raise CommandError(
                f"Key not created: the environment variable {name} is empty or unset. "
                "Put the key there, or pipe it in with --secret-stdin."
            )
        return secret

    def handle(self, *args, **options):
        org = Organization.objects.by_slug(options["org"])
        if org is None:
            raise CommandError(f"Key not created: no organization with slug “{options['org']}”.")
        project = None
        if options["project"]:
            lookup = options["project"]
            project = org.projects.by_name_or_id(lookup)
            if project is None:
                raise CommandError(f"Key not created: organization “{org.slug}” has no project “{lookup}”.")
        form = ApiKeyForm(
            data={
                "organization": org.pk,
                "project": project.pk if project else "",
                "name": options["name"],
                "kind": options["kind"],
                "provider": options["provider"],
                "secret": self.read_secret(options),
                "base_url": options["base_url"],
                "azure_endpoint": options["azure_endpoint"],
                "azure_api_version": options["azure_api_version"],
                "upstream_key_id": options["upstream_key_id"],
                "owner": options["owner"],
                "issued_at": options["issued_at"] or now().isoformat(),
                "expires_at": options["expires_at"],
            }
        )
        if not form.is_valid():
            raise CommandError("Key not created:\n" + form_errors(form))
        try:
            with transaction.atomic():
                key = form.save_and_record("cli:add_key")
        except IntegrityError:
            # Someone registered the same key between validation and save; the constraint caught it.
            raise CommandError("Key not created: this key is already registered (run list_keys to find it).") from None
        where = f"project “{key.project}”" if key.project else f"organization “{org}”"
        self.stdout.write(f"Created key {key.pk} ({key.hint}) in {where}. {first_probe_message(form)}")
