from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Organizations and projects"

    def ready(self):
        from . import signals  # noqa: F401  (connects the login audit receivers)
