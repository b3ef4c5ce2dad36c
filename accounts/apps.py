from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Organizations and projects"

    def ready(self):
        from console import health

        from . import access_changes, heartbeat, signals  # noqa: F401  (connect the audit receivers)
        from .admin import audit_other_packages_admins

        audit_other_packages_admins()
        health.register_check("heartbeats", heartbeat.readiness)
