from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Organizations and projects"

    def ready(self):
        from console import health

        from . import heartbeat, signals  # noqa: F401  (signals: connects the login audit receivers)

        health.register_check("heartbeats", heartbeat.readiness)
