from django.apps import AppConfig


class SyncConfig(AppConfig):
    name = "sync"
    verbose_name = "Organization sync"

    def ready(self):
        from console import metrics as console_metrics

        from . import metrics

        console_metrics.register_provider("sync", metrics.collect)
