from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"
    verbose_name = "Usage and costs"

    def ready(self):
        from console import metrics as console_metrics

        from . import metrics

        console_metrics.register_provider("usage", metrics.collect)
