"""rdeploy settings: one module, every value from the environment (see config/env.py).

The embedded defaults (SQLite and artifacts under RDEPLOY_DATA_DIR, Redis on localhost,
the local target) need no configuration. Production switches are explicit.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured

import container_templates
from config.env import Env
from deployer import task_names
from deployer.durations import idle_stop_after_parse

# Lets runtime code write `admin.ModelAdmin[Model]` as the type checker expects.
django_stubs_ext.monkeypatch()

env = Env()

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env.text("RDEPLOY_DATA_DIR", str(BASE_DIR / "var"))).resolve()

DEBUG = env.flag("DJANGO_DEBUG", False)

_DEV_SECRET_KEY = "insecure-development-key-never-use-in-production"  # noqa: S105 (DEBUG only)
SECRET_KEY = env.optional_text("DJANGO_SECRET_KEY") or ""
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) must be set when DJANGO_DEBUG is off; "
            "`make run` generates one under RDEPLOY_DATA_DIR."
        )
    SECRET_KEY = _DEV_SECRET_KEY
elif not DEBUG and (len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY == _DEV_SECRET_KEY):
    raise ImproperlyConfigured("DJANGO_SECRET_KEY is too weak for production: use 50+ random characters.")

ALLOWED_HOSTS = env.items("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.items("DJANGO_CSRF_TRUSTED_ORIGINS", [])
# Where users and CI reach this installation; used to build invoke and public URLs.
PUBLIC_BASE_URL = env.text("RDEPLOY_PUBLIC_BASE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "deployer",
    "webui",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Database -------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        env.text("DATABASE_URL", f"sqlite:///{DATA_DIR / 'rdeploy.sqlite3'}"),
        conn_max_age=env.integer("DATABASE_CONN_MAX_AGE", 60, minimum=0),
        # A kept connection is checked before each request reuses it: after a PostgreSQL
        # restart the web server and worker reconnect instead of failing once per connection.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        # The web server, the worker and beat share one file: WAL lets readers run beside a
        # writer, IMMEDIATE takes the write lock up front so concurrent writers wait
        # (busy timeout) instead of failing with "database is locked" mid-transaction.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # A file, not :memory:, so a real Celery worker started by the tests sees the test data.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-rdeploy.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: Celery broker and Django cache ---------------------------------------------
REDIS_URL = env.url("REDIS_URL", "redis://127.0.0.1:6379/0", schemes=("redis", "rediss", "unix"))
# Short socket timeouts: a Redis that does not answer costs a request at most a second or
# two; the request paths that use the cache degrade without it (docs/pipeline.md).
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        # JSON, not pickle: unpickling what Redis holds would run its code (config/cache.py).
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 2, "serializer": "config.cache.JSONSerializer"},
    }
}
# Sessions in the database, not the cache: signing in and the dashboard work while Redis is down.
SESSION_ENGINE = "django.contrib.sessions.backends.db"

# --- Artifact storage ------------------------------------------------------------------
# Everything that stores files goes through django.core.files.storage.storages["artifacts"],
# so switching to S3 is configuration only.
ARTIFACT_STORAGE = env.choice("RDEPLOY_ARTIFACT_STORAGE", "filesystem", choices=("filesystem", "s3"))
_artifact_backend: dict[str, object]
if ARTIFACT_STORAGE == "s3":
    _artifact_backend = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.text("RDEPLOY_ARTIFACT_BUCKET", ""),
            "location": env.text("RDEPLOY_ARTIFACT_PREFIX", "artifacts"),
            "default_acl": None,
            "file_overwrite": False,
        },
    }
    if not _artifact_backend["OPTIONS"]["bucket_name"]:  # type: ignore[index]
        raise ImproperlyConfigured("RDEPLOY_ARTIFACT_STORAGE=s3 needs RDEPLOY_ARTIFACT_BUCKET.")
else:
    _artifact_backend = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(DATA_DIR / "artifacts"), "file_permissions_mode": 0o640},
    }
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(DATA_DIR / "media")},
    },
    "artifacts": _artifact_backend,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
# WhiteNoise serves straight from the apps' static folders, so `make run` and the tests
# need no collectstatic step; the Docker image runs collectstatic for compressed copies.
WHITENOISE_USE_FINDERS = True

# --- rdeploy ---------------------------------------------------------------------------
# Tags every cloud resource so teardown and `rdeploy_gc` find what this installation owns.
# Without hyphens, so names like rdeploy-<installation>-<endpoint>-<id> (containers) cannot
# be read two ways by two installations sharing a container engine or an AWS account.
INSTALLATION_ID = env.matching(
    "RDEPLOY_INSTALLATION_ID", "default", pattern=r"[a-z0-9]{1,32}", meaning="1-32 lowercase letters and digits"
)
# For all the files of one upload request together (the model and its sample), on both doors.
MAX_UPLOAD_BYTES = env.integer("RDEPLOY_MAX_UPLOAD_BYTES", 2 * 1024**3, minimum=1)
# Django's default is 100 files a request. An upload sends two (model_intake.UPLOAD_FILE_FIELDS);
# one more reaches the upload handler, which refuses it by name; Django refuses the rest.
DATA_UPLOAD_MAX_NUMBER_FILES = 3
# The upload doors install artifacts.uploads.HashingUploadHandler; every other request stores no
# file and reads no multipart body above DATA_UPLOAD_MAX_MEMORY_SIZE (Django's defaults wrote
# files of any size to disk for any form, the sign-in page's included).
FILE_UPLOAD_HANDLERS = ["deployer.artifacts.uploads.NoFilesUploadHandler"]
# Uploads stream to disk above 2.5 MB (Django's default) so a 1 GiB model costs no memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_TEMP_DIR = str(DATA_DIR / "tmp")
DATA_UPLOAD_MAX_MEMORY_SIZE = env.integer("RDEPLOY_MAX_REQUEST_BODY", 7 * 1024 * 1024, minimum=1024)
# The host's R, for trusted work only (training the demo's and the tests' models): model
# code never runs in it, only in containers.
RSCRIPT = env.text("RDEPLOY_RSCRIPT", "Rscript")
CRAN_REPO = env.optional_text("RDEPLOY_CRAN_REPO")
RUNTIME_DIR = BASE_DIR / "container_templates" / "runtime"
# Model code runs only in containers (docs/containers.md): the engine's CLI (podman here,
# docker where a Docker Engine serves DOCKER_HOST, e.g. compose), and the base image of
# every serving image (scripts/base_image.sh builds it; on CodeBuild a Debian image).
CONTAINER_CLI = env.choice("RDEPLOY_CONTAINER_CLI", "podman", choices=("podman", "docker"))
CONTAINERS_CONF = BASE_DIR / "config" / "containers.conf"
BASE_IMAGE = env.optional_text("RDEPLOY_BASE_IMAGE") or container_templates.base_image()
# Model intake (docs/model-intake.md): archive-bomb limits for bundles, and the limits of
# the container R inspects uploads in (every .rds is code: CVE-2024-27322).
MAX_BUNDLE_MEMBERS = env.integer("RDEPLOY_MAX_BUNDLE_MEMBERS", 1000, minimum=1)
MAX_UNPACKED_BYTES = env.integer("RDEPLOY_MAX_UNPACKED_BYTES", 4 * 1024**3, minimum=1)
INSPECT_TIMEOUT_SECONDS = env.integer("RDEPLOY_INSPECT_TIMEOUT", 120, minimum=5)
# The container's memory, swap included (its scratch tmpfs counts too).
INSPECT_MEMORY_BYTES = env.integer("RDEPLOY_INSPECT_MEMORY_BYTES", 4 * 1024**3, minimum=256 * 1024**2)

# --- AWS: the SageMaker target (docs/sagemaker.md) ----------------------------------------
# Read lazily by deployer/targets/sagemaker/: an installation using only the local target
# needs none of these, and a missing one fails the first SageMaker step naming it.
# Credentials come from boto3's own chain (environment, profile, instance role).
AWS_REGION = env.optional_text("AWS_REGION") or env.optional_text("AWS_DEFAULT_REGION")
# Points every client at moto (tests) or LocalStack; unset means real AWS.
AWS_ENDPOINT_URL = env.optional_text("AWS_ENDPOINT_URL")
# botocore's "adaptive" retry mode: exponential backoff with jitter plus a client-side
# rate limiter that slows down after throttling errors.
AWS_MAX_ATTEMPTS = env.integer("RDEPLOY_AWS_MAX_ATTEMPTS", 8, minimum=1)
RDEPLOY_SAGEMAKER_ROLE_ARN = env.optional_text("RDEPLOY_SAGEMAKER_ROLE_ARN")
RDEPLOY_S3_BUCKET = env.optional_text("RDEPLOY_S3_BUCKET")
RDEPLOY_ECR_REPOSITORY = env.text("RDEPLOY_ECR_REPOSITORY", "rdeploy-runtime")
# Where SageMaker images are built: CodeBuild (no Docker on workers) or the workers' own Docker engine.
RDEPLOY_IMAGE_BUILDER = env.choice("RDEPLOY_IMAGE_BUILDER", "codebuild", choices=("codebuild", "docker"))
RDEPLOY_CODEBUILD_ROLE_ARN = env.optional_text("RDEPLOY_CODEBUILD_ROLE_ARN")
RDEPLOY_LAMBDA_ROLE_ARN = env.optional_text("RDEPLOY_LAMBDA_ROLE_ARN")
# Caps the per-endpoint Lambda roles rdeploy creates when RDEPLOY_LAMBDA_ROLE_ARN is unset.
RDEPLOY_LAMBDA_PERMISSIONS_BOUNDARY = env.optional_text("RDEPLOY_LAMBDA_PERMISSIONS_BOUNDARY")
RDEPLOY_RESOURCE_PREFIX = env.text("RDEPLOY_RESOURCE_PREFIX", "rdeploy")

# --- Auth ------------------------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "deployer.authentication.HashedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    # drf-spectacular's, plus the error answers each operation can give (deployer/api/schema.py).
    "DEFAULT_SCHEMA_CLASS": "deployer.api.schema.AutoSchema",
    # Domain errors (deployer/errors.py) become 400/404/409/413 here, and nowhere else.
    "EXCEPTION_HANDLER": "deployer.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "rdeploy API",
    "DESCRIPTION": "Deploy fitted R models to a local endpoint or AWS SageMaker.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Served from static files (the sidecar package): no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several models have a `status` field with different choices: name each enum.
    "ENUM_NAME_OVERRIDES": {
        "ModelVersionStatusEnum": "deployer.models.ModelVersion.Status",
        "EndpointStatusEnum": "deployer.models.Endpoint.Status",
        "DeploymentStatusEnum": "deployer.models.Deployment.Status",
        "DeploymentStepStatusEnum": "deployer.models.DeploymentStep.Status",
    },
}

# --- Celery (https://docs.celeryq.dev/en/stable/userguide/configuration.html) -------------
CELERY_BROKER_URL = REDIS_URL
# Results are not used: tasks write their outcome to the database rows they advance.
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
# JSON only: pickle from a broker is remote code execution waiting to happen.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
# Tasks are idempotent, so a message is acknowledged after the task ran, and re-queued
# when the worker dies mid-task (SIGKILL, OOM): the next worker resumes the step.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message at a time per process: a slow inspection must not hold queued steps hostage.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Hard limit kills a runaway task; the soft limit lets it record a clean failure first.
# Pipeline steps are short polls; inspection and package installs are the longest tasks.
CELERY_TASK_SOFT_TIME_LIMIT = env.integer("RDEPLOY_TASK_SOFT_TIME_LIMIT", 900, minimum=10)
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + 60
# Redis re-delivers unacknowledged messages after the visibility timeout: it must exceed
# the longest task, or a still-running task would be started a second time.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 300}
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "rdeploy"
# Periodic reconciliation (filled by the pipeline): advances or repairs whatever a dead
# worker left behind.
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {}

# --- Deployment pipeline (docs/pipeline.md) ------------------------------------------------
# A task claims a deployment for this long; after a worker dies mid-step, the reconciler
# resumes the deployment once the lease has expired.
PIPELINE_LEASE_SECONDS = env.integer("RDEPLOY_PIPELINE_LEASE_SECONDS", 30, minimum=5)
# The reconciler resumes stalled deployments and restarts crashed local runtimes.
PIPELINE_RECONCILE_SECONDS = env.integer("RDEPLOY_PIPELINE_RECONCILE_SECONDS", 5, minimum=1)
CELERY_BEAT_SCHEDULE["pipeline-reconcile"] = {
    "task": task_names.PIPELINE_RECONCILE,
    "schedule": float(PIPELINE_RECONCILE_SECONDS),
    # A reconcile that waited longer than its interval is superseded by the next one.
    "options": {"expires": float(PIPELINE_RECONCILE_SECONDS)},
}
# Model intake: queue again inspections whose message was lost (docs/model-intake.md).
CELERY_BEAT_SCHEDULE["model-inspection-requeue"] = {
    "task": task_names.MODEL_VERSIONS_REQUEUE_STUCK,
    "schedule": 300.0,
    "options": {"expires": 300.0},
}
# Uploads a killed web process left in FILE_UPLOAD_TEMP_DIR (deployer/services/upload_cleanup.py):
# removed once not written for UPLOAD_TEMP_MAX_AGE_SECONDS, far above any live request's pause.
UPLOAD_TEMP_MAX_AGE_SECONDS = env.integer("RDEPLOY_UPLOAD_TEMP_MAX_AGE", 3600, minimum=1)
UPLOAD_TEMP_CLEAN_SECONDS = env.integer("RDEPLOY_UPLOAD_TEMP_CLEAN_SECONDS", 600, minimum=1)
CELERY_BEAT_SCHEDULE["upload-temp-files-remove-stale"] = {
    "task": task_names.UPLOAD_TEMP_FILES_REMOVE_STALE,
    "schedule": float(UPLOAD_TEMP_CLEAN_SECONDS),
    "options": {"expires": float(UPLOAD_TEMP_CLEAN_SECONDS)},
}
# /readyz: a worker says whether its container engine answers (deployer/health.py).
CELERY_BEAT_SCHEDULE["container-engine-check"] = {
    "task": task_names.CONTAINER_ENGINE_CHECK,
    "schedule": 30.0,
    "options": {"expires": 30.0},
}
# Fault tests only: a pause after each step's work and before its outcome is saved, the
# window in which the tests SIGKILL the worker.
PIPELINE_FAULT_PAUSE_SECONDS = env.integer("RDEPLOY_PIPELINE_FAULT_PAUSE_MS", 0, minimum=0) / 1000
# Public endpoint API (/e/<name>/invocations): the per-key token bucket when the endpoint's
# options give none (API Gateway usage-plan semantics: steady rate per second and burst).
GATEWAY_DEFAULT_RATE = env.integer("RDEPLOY_GATEWAY_RATE", 100, minimum=1)
GATEWAY_DEFAULT_BURST = env.integer("RDEPLOY_GATEWAY_BURST", 200, minimum=1)
# Requests one endpoint may have in progress in a web process at once; up to
# GATEWAY_MAX_QUEUED more wait for a slot, each for GATEWAY_QUEUE_SECONDS at most, so a
# short burst is served late instead of refused; the rest get 503 at once. A waiter holds a
# thread too: keep both together below the process's threads (make run, compose: 8, so
# 4 + 2 leaves 2), so one slow model never holds them all (deployer/services/gateway.py).
GATEWAY_MAX_INFLIGHT = env.integer("RDEPLOY_GATEWAY_MAX_INFLIGHT", 4, minimum=1)
GATEWAY_MAX_QUEUED = env.integer("RDEPLOY_GATEWAY_MAX_QUEUED", 2, minimum=0)
GATEWAY_QUEUE_SECONDS = env.integer("RDEPLOY_GATEWAY_QUEUE_MS", 2000, minimum=0) / 1000
# What an owner may give one local endpoint: its container's memory and CPU cores (one
# per R worker); options above are refused.
LOCAL_MAX_MEMORY_MB = env.integer("RDEPLOY_LOCAL_MAX_MEMORY_MB", 4096, minimum=256)
LOCAL_MAX_CPUS = env.integer("RDEPLOY_LOCAL_MAX_CPUS", max(1, (os.cpu_count() or 1) // 2), minimum=1)

# --- Sign-in throttling (deployer/services/login_throttle.py, docs/security.md) ----------
# Failures counted per fixed window; reaching a limit locks the username or address.
LOGIN_FAILURES_PER_USERNAME = env.integer("RDEPLOY_LOGIN_FAILURES_PER_USERNAME", 5, minimum=1)
LOGIN_FAILURES_PER_ADDRESS = env.integer("RDEPLOY_LOGIN_FAILURES_PER_ADDRESS", 20, minimum=1)
TOKEN_FAILURES_PER_ADDRESS = env.integer("RDEPLOY_TOKEN_FAILURES_PER_ADDRESS", 20, minimum=1)
LOGIN_FAILURE_WINDOW_SECONDS = env.integer("RDEPLOY_LOGIN_FAILURE_WINDOW_SECONDS", 900, minimum=1)
LOGIN_LOCKOUT_SECONDS = env.integer("RDEPLOY_LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
# Only behind a proxy that appends the client's address to X-Forwarded-For: otherwise
# every client would be "the proxy", or could name any address it likes.
TRUST_X_FORWARDED_FOR = env.flag("RDEPLOY_TRUST_X_FORWARDED_FOR", False)

# --- Quotas (deployer/services/quotas.py; per-user overrides: UserQuota in the admin) ----
# SageMaker instance types any endpoint may use; the general-purpose and compute families
# up to xlarge (no GPUs), which serve R models well.
ALLOWED_INSTANCE_TYPES = frozenset(
    env.items(
        "RDEPLOY_ALLOWED_INSTANCE_TYPES",
        [
            "ml.t2.medium",
            "ml.t2.large",
            "ml.m5.large",
            "ml.m5.xlarge",
            "ml.c5.large",
            "ml.c5.xlarge",
        ],
    )
)
# A user's defaults, unless staff set a UserQuota: endpoints not deleted, SageMaker
# instances across them (the autoscaling maximum when larger), local memory across them.
QUOTA_MAX_ENDPOINTS = env.integer("RDEPLOY_QUOTA_MAX_ENDPOINTS", 10, minimum=0)
QUOTA_MAX_INSTANCES = env.integer("RDEPLOY_QUOTA_MAX_INSTANCES", 4, minimum=0)
QUOTA_MAX_LOCAL_MEMORY_MB = env.integer("RDEPLOY_QUOTA_MAX_LOCAL_MEMORY_MB", 16384, minimum=0)


def _idle_stop_after(name: str, default: str) -> timedelta | None:
    try:
        return idle_stop_after_parse(env.text(name, default))
    except ValueError as error:
        raise ImproperlyConfigured(f"{name}: {error}") from None


# The idle stop of an endpoint without the option idle_stop_after, per target (issue 14,
# docs/pipeline.md): a forgotten SageMaker endpoint bills every hour, a local one only holds
# its memory reservation, so only SageMaker's is on by default.
IDLE_STOP_AFTER = {
    "local": _idle_stop_after("RDEPLOY_IDLE_STOP_AFTER_LOCAL", "off"),
    "sagemaker": _idle_stop_after("RDEPLOY_IDLE_STOP_AFTER_SAGEMAKER", "72h"),
}
# `rdeploy_gc` lists endpoints stopped for longer than this, with what they still cost.
GC_STOPPED_AFTER_DAYS = env.integer("RDEPLOY_GC_STOPPED_AFTER_DAYS", 30, minimum=1)
CELERY_BEAT_SCHEDULE["gc-report"] = {
    "task": task_names.GC_REPORT,
    "schedule": 24 * 3600.0,
    "options": {"expires": 3600.0},
}

# --- Security (clean `manage.py check --deploy` with production values) ------------------
# HTTPS is the production default. The local quick start serves plain HTTP on loopback
# (DJANGO_HTTPS=0): redirects, HSTS and secure-only cookies would lock it out.
HTTPS = env.flag("DJANGO_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = HTTPS
SECURE_HSTS_SECONDS = env.integer("DJANGO_SECURE_HSTS_SECONDS", 31536000, minimum=0) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = env.flag("DJANGO_SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
# Behind a TLS-terminating proxy (nginx, an ALB), trust its X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env.flag("DJANGO_BEHIND_TLS_PROXY", False) else None
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# A load balancer's or the container engine's health check may ask over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SILENCED_SYSTEM_CHECKS: list[str] = []
# Plain HTTP that only answers loopback host names (compose's and `make run`'s defaults,
# compose publishing the port on 127.0.0.1): no request crosses a network, so Django's
# HTTPS warnings (HSTS, redirect, secure cookies) are about traffic this installation
# refuses. A real host name over plain HTTP keeps them (docs/security.md).
if not HTTPS and set(ALLOWED_HOSTS) <= {"localhost", "127.0.0.1", "[::1]"}:
    SILENCED_SYSTEM_CHECKS += ["security.W004", "security.W008", "security.W012", "security.W016"]
# HSTS preloading binds the whole domain and its subdomains for months and is hard to undo:
# the domain's owner opts in with DJANGO_SECURE_HSTS_PRELOAD=1, not a default.
if not SECURE_HSTS_PRELOAD:
    SILENCED_SYSTEM_CHECKS.append("security.W021")

# --- Shadow rollout (deployer/services/shadows.py, docs/pipeline.md) ---------------------
# Pairs kept per shadow (the oldest go first) and rows kept per answer: the comparison
# covers the latest pairs, the counters every copy.
SHADOW_MAX_PAIRS = env.integer("RDEPLOY_SHADOW_MAX_PAIRS", 5000, minimum=100)
SHADOW_MAX_ROWS = env.integer("RDEPLOY_SHADOW_MAX_ROWS", 100, minimum=1)
# Copies waiting in a web process for its sender; more are dropped (and counted), so a
# slow shadow never holds a caller or grows memory.
SHADOW_QUEUE_SIZE = env.integer("RDEPLOY_SHADOW_QUEUE_SIZE", 1000, minimum=1)
# The longest a shadow may run before it ends itself.
SHADOW_MAX_DURATION_HOURS = env.integer("RDEPLOY_SHADOW_MAX_DURATION_HOURS", 168, minimum=1)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.text("RDEPLOY_LOG_LEVEL", "INFO")},
}

for _directory in (DATA_DIR / "tmp", STATIC_ROOT):
    os.makedirs(_directory, exist_ok=True)
