from django.contrib.admin.apps import AdminConfig


class ConsoleAdminConfig(AdminConfig):
    """django.contrib.admin with the console's site (console/admin_site.py) as admin.site,
    so every `@admin.register` lands on it."""

    default_site = "console.admin_site.ConsoleAdminSite"
