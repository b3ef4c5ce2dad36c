"""ASGI entry point. Refuses to load with a bad configuration: see console/startup.py."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
application = get_asgi_application()

from console.startup import refuse_to_start_web  # noqa: E402  (after Django is set up)

refuse_to_start_web()
