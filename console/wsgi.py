"""WSGI entry point (gunicorn, runserver). Refuses to load with a bad configuration:
see console/startup.py."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
application = get_wsgi_application()

from console.startup import refuse_to_start_web  # noqa: E402  (after Django is set up)

refuse_to_start_web()
