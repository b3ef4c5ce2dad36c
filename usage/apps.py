from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"
    verbose_name = "Usage and costs"

    def ready(self):
        from console import dashboard as console_dashboard
        from console import metrics as console_metrics

        from . import dashboard, metrics

        console_metrics.register_provider("usage", metrics.collect)
        console_dashboard.register_panel("usage", dashboard.panel, order=20, permission="accounts.view_project")
