from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "keys"
    verbose_name = "API keys"

    def ready(self):
        from console import metrics as console_metrics

        from . import checks, metrics  # noqa: F401  (checks: registers the system checks)

        console_metrics.register_provider("keys", metrics.collect)
