from django.apps import AppConfig


class SyncConfig(AppConfig):
    name = "sync"
    verbose_name = "Organization sync"

    def ready(self):
        from console import dashboard as console_dashboard
        from console import metrics as console_metrics

        from . import dashboard, metrics

        console_metrics.register_provider("sync", metrics.collect)
        console_dashboard.register_panel("sync", dashboard.panel, order=30, permission="sync.view_upstreamkey")
