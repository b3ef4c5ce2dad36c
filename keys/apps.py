from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "keys"
    verbose_name = "API keys"

    def ready(self):
        from console import dashboard as console_dashboard
        from console import metrics as console_metrics

        from . import checks, dashboard, metrics  # noqa: F401  (checks: registers the system checks)

        console_metrics.register_provider("keys", metrics.collect)
        console_dashboard.register_panel("keys", dashboard.panel, order=10, permission="keys.view_apikey")
