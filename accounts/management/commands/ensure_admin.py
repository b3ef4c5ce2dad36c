"""Create or refresh a superuser whose password comes from the environment.

`make run` uses it for the demo login. The password is read from an environment
variable (never from argv, where `ps` and shell history would show it) and is never
printed.
"""

import os

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import transaction

from accounts.models import AuditEvent
from console.leakguard import GuardedCommand

ADMINS = "Console admins"


class Command(GuardedCommand):
    help = (
        "Create the superuser USERNAME, or reset its password, from the environment variable "
        "named by --password-env (default CONSOLE_DEMO_ADMIN_PASSWORD)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--email", default="admin@example.com")
        parser.add_argument(
            "--password-env",
            default="CONSOLE_DEMO_ADMIN_PASSWORD",
            help="Name of the environment variable holding the password.",
        )

    @transaction.atomic
    def handle(self, *args, username, email, password_env, **options):
        password = os.environ.get(password_env, "")
        if not password:
            raise CommandError(f"Set {password_env} to the password for “{username}”.")
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        created = user is None
        if created:
            user = User(username=username, email=email)
        try:
            validate_password(password, user)
        except ValidationError as e:
            raise CommandError(f"{password_env} is too weak: " + " ".join(e.messages)) from None
        user.is_staff = True
        user.is_superuser = True
        user.is_active = True
        user.set_password(password)
        user.save()
        group = Group.objects.filter(name=ADMINS).first()
        if group:
            user.groups.add(group)
        if created:
            AuditEvent.record("cli:ensure_admin", "user.created", user, superuser=True)
        self.stdout.write(f"Superuser “{username}” {'created' if created else 'ready'}.")
