"""Test settings: real PostgreSQL and Redis on this machine, fresh encryption keys.

Values are put into os.environ (not just into settings) so that subprocesses the tests
start — the Celery worker, the sandbox API, manage.py commands — see the same ones.
"""

import base64
import os
import secrets
import socket

os.environ["CONSOLE_ENV_FILE"] = os.devnull  # never read a developer's .env in tests
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/console")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
os.environ.setdefault("CONSOLE_ENCRYPTION_KEYS", "v1:" + base64.urlsafe_b64encode(os.urandom(32)).decode())
os.environ.setdefault("CONSOLE_FINGERPRINT_KEY", secrets.token_urlsafe(32))
os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # tests point keys at their sandbox


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The session's sandbox API listens here (tests/conftest.py), and only it, besides the
# production defaults and the port nothing listens on, is where tests may send a key:
# operators allow-list exact loopback origins the same way (README, "Where keys may go").
os.environ.setdefault("SANDBOX_TEST_PORT", str(_free_port()))
os.environ.setdefault(
    "CONSOLE_ALLOWED_API_HOSTS",
    "api.openai.com,*.openai.azure.com,*.cognitiveservices.azure.com,"
    f"127.0.0.1:9,127.0.0.1:{os.environ['SANDBOX_TEST_PORT']}",
)

from console.settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"  # noqa: F405
# Serve static files from the apps (no collectstatic in tests), as in development.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
STATIC_ROOT = BASE_DIR / "var" / "test-static"  # noqa: F405
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# A dead worker's unacknowledged messages come back once their visibility timeout has passed,
# at kombu's next restore sweep: every unacked_restore_interval × unacked_restore_throttle
# seconds, 10 × 10 by default. Tests that kill a worker set a visibility timeout of a few
# seconds; sweeping every second lets them wait for that timeout, not for kombu's period.
if CELERY_BROKER_URL.startswith("redis"):  # noqa: F405
    CELERY_BROKER_TRANSPORT_OPTIONS = {  # noqa: F405
        **CELERY_BROKER_TRANSPORT_OPTIONS,  # noqa: F405
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
