from console.leakguard import GuardedCommand
from keys import crypto


class Command(GuardedCommand):
    help = "Print a new master key for CONSOLE_ENCRYPTION_KEYS (and optionally a fingerprint key)."

    def add_base_argument(self, parser, *args, **kwargs):
        # Here --version is the key version (documented in README), not Django's version.
        if "--version" in args:
            return
        super().add_base_argument(parser, *args, **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("--version", type=int, default=1, dest="key_version", help="Version number to tag it with.")
        parser.add_argument("--fingerprint", action="store_true", help="Print a CONSOLE_FINGERPRINT_KEY value instead.")

    def handle(self, *args, key_version, fingerprint, **options):
        if key_version < 1:
            from django.core.management.base import CommandError

            raise CommandError("--version must be 1 or more.")
        if fingerprint:
            self.stdout.write(crypto.generate_fingerprint_key())
        else:
            self.stdout.write(crypto.generate_master_key(key_version))
