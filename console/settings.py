"""Settings for the OpenAI platform console.

Every value comes from the environment (django-environ), with embedded defaults that
let `make run` work on a fresh machine: SQLite, a filesystem Celery broker, the local
sandbox API. See README.md, "Configuration", for each variable.
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
ENV_FILE = env.str("CONSOLE_ENV_FILE", default=str(BASE_DIR / ".env"))
if Path(ENV_FILE).is_file():
    environ.Env.read_env(ENV_FILE, overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY and DEBUG:
    # Local development only; check --deploy and the startup check refuse this.
    SECRET_KEY = "django-insecure-local-development-only"
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "console.apps.ConsoleAdminConfig",  # the admin, on console.admin_site.ConsoleAdminSite
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "accounts",
    "keys",
    "usage",
    "sync",
    "api",
    "ninja",  # the REST API's docs page serves Swagger UI from static files (no CDN)
    "sandbox",
    # Login hardening (see "Login and sessions" below).
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "axes",
    "csp",
]

MIDDLEWARE = [
    # First: every log line of the request carries its id (console/request_id.py).
    "console.request_id.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The audit log's source address and actor (console/request_origin.py), and every 403
    # recorded as a refusal (console/denials.py).
    "console.request_origin.RequestOriginMiddleware",
    "console.denials.DenialMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Audits every REST API call made with a token (api/call_audit.py).
    "api.call_audit.ApiCallAuditMiddleware",
    # Last, as axes asks: it turns a lockout flagged during the request into the response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "console.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "console.wsgi.application"
ASGI_APPLICATION = "console.asgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=0))
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # web + worker + beat share the file: wait for locks instead of failing at once.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

LOGIN_URL = "admin:login"

# --- Login and sessions (console/admin_site.py, accounts/two_factor.py, accounts/signals.py)
# The lockout backend first: it refuses a locked-out username or address before any
# password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_REDIRECT_URL = "admin:index"
LOGOUT_REDIRECT_URL = "admin:login"
# Failed logins per username and (separately) per client address before that username or
# address is locked out; failures are forgotten a cool-off time after the last one.
AXES_FAILURE_LIMIT = env.int("CONSOLE_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("CONSOLE_LOGIN_COOLOFF_MINUTES", default=15) / 60  # hours
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# Not reset by a successful login: axes would also clear the address's failures, so anyone
# with an account could wipe the count between guesses at other usernames.
AXES_RESET_ON_SUCCESS = False
# Unknown usernames are counted under a keyed hash: an API key pasted into the username
# box never reaches the attempts table or the log.
AXES_USERNAME_CALLABLE = "accounts.signals.lockout_username"
AXES_LOCKOUT_CALLABLE = "console.admin_site.lockout_response"
AXES_ENABLE_ADMIN = True
# Behind a reverse proxy every request comes from the proxy: say how many proxies append
# to X-Forwarded-For, or the per-address lockout would lock out everyone at once.
CONSOLE_LOGIN_PROXY_COUNT = env.int("CONSOLE_LOGIN_PROXY_COUNT", default=0)
if CONSOLE_LOGIN_PROXY_COUNT:
    AXES_IPWARE_PROXY_COUNT = CONSOLE_LOGIN_PROXY_COUNT
    AXES_IPWARE_META_PRECEDENCE_ORDER = ("HTTP_X_FORWARDED_FOR", "REMOTE_ADDR")
    AXES_IPWARE_PROXY_ORDER = "right-most"
# Everyone must enrol a TOTP device before using the admin. Off: only users who enrolled
# one give a token at login.
CONSOLE_REQUIRE_2FA = env.bool("CONSOLE_REQUIRE_2FA", default=False)
OTP_TOTP_ISSUER = env.str("CONSOLE_2FA_ISSUER", default="OpenAI console")
OTP_ADMIN_HIDE_SENSITIVE_DATA = True  # device admin pages never show a TOTP seed
# Sessions end after this long without a request, and (by default in production) when
# the browser closes.
CONSOLE_SESSION_IDLE_MINUTES = env.int("CONSOLE_SESSION_IDLE_MINUTES", default=480)
SESSION_COOKIE_AGE = CONSOLE_SESSION_IDLE_MINUTES * 60
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = env.bool("SESSION_EXPIRE_AT_BROWSER_CLOSE", default=not DEBUG)
# Scripts, styles and images from this origin only; no inline script, no framing.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

# --- Security (production values come from the environment; see .env.production.example)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("SECURE_PROXY_SSL_HEADER", default=False) else None
)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# A load balancer's health checks may come over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]

# --- Error reports (console/error_reports.py): secrets are cleansed from the DEBUG 500 page
# and error e-mails even with DEBUG=true (Django's own filter only cleanses without DEBUG).
DEFAULT_EXCEPTION_REPORTER_FILTER = "console.error_reports.SecretSafeExceptionReporterFilter"
DEFAULT_EXCEPTION_REPORTER = "console.error_reports.SecretSafeExceptionReporter"
# Forms never re-display a key-shaped value typed into the wrong field (console/leakguard.py).
FORM_RENDERER = "console.leakguard.GuardedFormRenderer"

# --- Encryption at rest (keys/crypto.py). Newest first: "v2:<base64>,v1:<base64>".
CONSOLE_ENCRYPTION_KEYS = env.list("CONSOLE_ENCRYPTION_KEYS", default=[])
# HMAC key for duplicate detection; separate from the encryption keys on purpose.
CONSOLE_FINGERPRINT_KEY = env.str("CONSOLE_FINGERPRINT_KEY", default="")

# --- Redis, Celery, cache
REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_DIR = Path(env.str("CELERY_BROKER_DIR", default=str(BASE_DIR / "var" / "broker")))
if REDIS_URL:
    CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": env.str("CACHE_URL", default=REDIS_URL),
        }
    }
else:
    CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Tasks return nothing worth keeping; results would only be another copy of data.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# Unacked messages come back after this long (Redis): must exceed the longest task.
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=600)
CELERY_TASK_SOFT_TIME_LIMIT = max(CELERY_TASK_TIME_LIMIT - 30, 1)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "out"),
        "data_folder_out": str(CELERY_BROKER_DIR / "out"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        # Broadcast (pidbox) exchanges; kombu's default is ./control in the working directory.
        "control_folder": str(CELERY_BROKER_DIR / "control"),
        "store_processed": False,
    }
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2}

# --- Upstream API (console/upstream.py)
# Where OpenAI keys are sent unless a key has its own base_url. `make run` points it at
# the local sandbox API; production leaves the default.
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="https://api.openai.com/v1")
UPSTREAM_CONNECT_TIMEOUT = env.float("UPSTREAM_CONNECT_TIMEOUT", default=5.0)
UPSTREAM_READ_TIMEOUT = env.float("UPSTREAM_READ_TIMEOUT", default=10.0)
UPSTREAM_MAX_CONNECTIONS = env.int("UPSTREAM_MAX_CONNECTIONS", default=100)
AZURE_DEFAULT_API_VERSION = env.str("AZURE_DEFAULT_API_VERSION", default="2024-10-21")

# --- Where secrets and alerts may be sent (console/destinations.py)
# Hosts a key may be sent to: names, "*.domain" wildcards (subdomains only), or exact
# "host:port" / "127.0.0.1:8100" / "[::1]:8100" entries (may be internal; plain http only for
# a listed loopback IP with its port). Set by the operator only; admins cannot widen it.
CONSOLE_ALLOWED_API_HOSTS = env.list(
    "CONSOLE_ALLOWED_API_HOSTS",
    default=["api.openai.com", "*.openai.azure.com", "*.cognitiveservices.azure.com"],
)
# Hosts alert webhooks may be sent to, same syntax; empty: any host with public addresses.
CONSOLE_ALLOWED_WEBHOOK_HOSTS = env.list("CONSOLE_ALLOWED_WEBHOOK_HOSTS", default=[])

# --- Probe sweep (keys/probe.py, keys/sweep.py)
PROBE_INTERVAL_SECONDS = env.int("PROBE_INTERVAL_SECONDS", default=3600)
PROBE_SWEEP_EVERY_SECONDS = env.int("PROBE_SWEEP_EVERY_SECONDS", default=60)
PROBE_BATCH_SIZE = env.int("PROBE_BATCH_SIZE", default=500)
PROBE_CONCURRENCY = env.int("PROBE_CONCURRENCY", default=100)
PROBE_MAX_ATTEMPTS = env.int("PROBE_MAX_ATTEMPTS", default=3)
PROBE_BACKOFF_BASE_SECONDS = env.float("PROBE_BACKOFF_BASE_SECONDS", default=0.5)
PROBE_BACKOFF_MAX_SECONDS = env.float("PROBE_BACKOFF_MAX_SECONDS", default=8.0)
# Share of a project's requests-per-minute that probes may use, across all workers.
PROBE_PROJECT_RPM_SHARE = env.float("PROBE_PROJECT_RPM_SHARE", default=0.1)
# How long a probe may wait for its project's limiter before it is deferred.
PROBE_LIMITER_MAX_WAIT_SECONDS = env.float("PROBE_LIMITER_MAX_WAIT_SECONDS", default=5.0)
# A claimed key is leased to its batch for this long. It must outlast the broker's
# redelivery of an unacknowledged batch (visibility timeout + the task's time limit), or
# a batch whose worker died would be claimed again by a sweep (a new slot) AND
# redelivered: two probes. Derived from the Celery settings; check keys.E010 enforces it.
PROBE_LEASE_SECONDS = env.int(
    "PROBE_LEASE_SECONDS", default=CELERY_VISIBILITY_TIMEOUT + CELERY_TASK_TIME_LIMIT + 5 * 60
)
# Full probe results are kept this many days; older ones become outcome transitions and a
# daily rollup per key, then are deleted (keys/retention.py, a daily beat task).
PROBE_RESULTS_KEEP_DAYS = env.int("PROBE_RESULTS_KEEP_DAYS", default=7)
CIRCUIT_FAILURE_THRESHOLD = env.int("CIRCUIT_FAILURE_THRESHOLD", default=5)
CIRCUIT_COOLDOWN_SECONDS = env.int("CIRCUIT_COOLDOWN_SECONDS", default=60)

# --- Key rotation (keys/rotation.py)
# How long a rotated key's previous secret keeps working before it is revoked.
ROTATION_GRACE_HOURS = env.float("ROTATION_GRACE_HOURS", default=24)
# --- Rotation states, stale flags and reminders (keys/states.py, keys/reminders.py)
# A key is "due soon" this many days before its rotation falls due.
ROTATION_DUE_SOON_DAYS = env.int("ROTATION_DUE_SOON_DAYS", default=14)
# A key with no use in this many days is flagged unused (from its last_used_at).
STALE_UNUSED_DAYS = env.int("STALE_UNUSED_DAYS", default=30)
# This many failed probes in a row flag a key failing (an invalid_key outcome at once).
FAILING_PROBE_COUNT = env.int("FAILING_PROBE_COUNT", default=3)
# Days before a key falls due that its organization is reminded (and once when overdue).
ROTATION_REMINDER_DAYS = [int(d) for d in env.list("ROTATION_REMINDER_DAYS", default=["14", "7", "1"])]

# --- Usage and costs ingestion (usage/ingest.py)
# Days re-read on every run: the Usage and Costs APIs report late.
USAGE_TRAILING_DAYS = env.int("USAGE_TRAILING_DAYS", default=3)
# Pages one endpoint may return in one run before ingestion stops with an error.
USAGE_MAX_PAGES = env.int("USAGE_MAX_PAGES", default=1000)
# Days read on an organization's first ingest.
USAGE_BACKFILL_DAYS = env.int("USAGE_BACKFILL_DAYS", default=30)
# Largest usage or costs page read (bytes). A day of 1,000 keys × 3 models is ~1 MB of JSON;
# probes keep their own 256 KiB cap (console.upstream.MAX_BODY_BYTES).
USAGE_MAX_BODY_BYTES = env.int("USAGE_MAX_BODY_BYTES", default=64 * 1024 * 1024)

# --- Budget alerts and their delivery (usage/alerts.py, accounts/notifications.py)
# Attempts at delivering one alert (email and webhook, each until it succeeds) before
# giving up; the wait after the n-th failed attempt is BACKOFF × 2^(n-1), at most a day.
NOTIFICATION_MAX_ATTEMPTS = env.int("NOTIFICATION_MAX_ATTEMPTS", default=8)
NOTIFICATION_BACKOFF_SECONDS = env.int("NOTIFICATION_BACKOFF_SECONDS", default=60)
NOTIFICATION_WEBHOOK_TIMEOUT_SECONDS = env.float("NOTIFICATION_WEBHOOK_TIMEOUT_SECONDS", default=10.0)
# Outgoing email: smtp://user:pass@host:587 (smtp+tls://, smtps://), consolemail:// prints it.
vars().update(env.email_url("EMAIL_URL", default="smtp://localhost:25"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="openai-console@localhost")
# --- Organization sync with the Administration API (sync/sync.py)
# Seconds between scheduled syncs of every organization with an admin key (beat).
SYNC_INTERVAL_SECONDS = env.int("SYNC_INTERVAL_SECONDS", default=3600)
# Pages one list may return in one sync before the organization stops with an error.
SYNC_MAX_PAGES = env.int("SYNC_MAX_PAGES", default=1000)
# Requests one organization's sync keeps in flight at once (projects are read in parallel).
SYNC_CONCURRENCY = env.int("SYNC_CONCURRENCY", default=8)
# --- Jobs started from the admin (accounts/jobs.py): an organization sync, a usage ingest
# A queued or running job with no progress for this long says it is stuck (no worker took
# it, or the one that did is gone) instead of spinning; a worker may then take it over.
JOB_STALE_SECONDS = env.int("JOB_STALE_SECONDS", default=180)
# Seconds between two progress writes of one job (the last one is always written).
JOB_PROGRESS_INTERVAL_SECONDS = env.float("JOB_PROGRESS_INTERVAL_SECONDS", default=0.5)
# --- Health and metrics (console/health.py, console/metrics.py; docs/OPERATIONS.md)
# /metrics is served only when enabled (default: with DEBUG); with a token, scrapes must
# send "Authorization: Bearer <token>".
METRICS_ENABLED = env.bool("METRICS_ENABLED", default=DEBUG)
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# --- REST API (api/)
# Calls one token may make per minute (a fixed window in the cache); more get 429.
API_RATE_LIMIT_PER_MINUTE = env.int("API_RATE_LIMIT_PER_MINUTE", default=120)
# Rows a list returns when the caller does not ask (limit=), and the most it may ask for.
API_PAGE_SIZE_DEFAULT = env.int("API_PAGE_SIZE_DEFAULT", default=50)
API_PAGE_SIZE_MAX = env.int("API_PAGE_SIZE_MAX", default=200)

# --- Sandbox API (sandbox/)
SANDBOX_PORT = env.int("SANDBOX_PORT", default=8100)

# plain: one line for people; json: one JSON object per line with the request id and the
# upstream request ids (console/log_format.py).
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("LOG_FORMAT must be plain or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": "console.log_format.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {"()": "console.log_format.JsonFormatter"},
    },
    "filters": {"no_client_error_tracebacks": {"()": "console.log_filters.NoTracebackForClientErrors"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # A 403 or 404 is one warning line, without a traceback (console/log_filters.py).
        "django.request": {"filters": ["no_client_error_tracebacks"]},
        # httpx2 logs every request line at INFO; keep it quiet.
        "httpx2": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        # axes logs every login attempt at INFO (masked); the audit log already has them.
        "axes": {"level": "WARNING"},
    },
}
