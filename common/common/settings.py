"""Helpers for the services' settings modules.

Every value comes from the environment (python-decouple) with a working development default, so a service
runs on a bare machine with SQLite, a file-based broker and a local-memory cache, and on PostgreSQL,
RabbitMQ and Redis when their URLs are set. These helpers only compute values; each service's flat
``settings.py`` decides what to use.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dj_database_url
from decouple import config
from django.core.exceptions import ImproperlyConfigured


def var_dir(base_dir: Path) -> Path:
    """Where a service keeps its runtime data (SQLite files, broker folders, mail, dev secrets)."""
    return Path(config("VAR_DIR", default=str(base_dir.parent / "var"))).resolve()


def is_production() -> bool:
    return config("ENVIRONMENT", default="development") == "production"


def secret(name: str, *, var: Path, scope: str = "shared", generate: Callable[[], str] | None = None) -> str:
    """Return the secret from the environment; in development, a random one persisted under
    ``var/secrets/<scope>/`` (``shared`` for values every process must agree on, else the service's name).

    Persisting (rather than generating per process) lets every process of the system, started in any
    order, agree on the same value without anyone committing it. Production never falls back.
    """
    value = config(name, default="")
    if value:
        return value
    if is_production():
        raise ImproperlyConfigured(f"{name} must be set in production (ENVIRONMENT=production).")
    path = var / "secrets" / scope / name.lower()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        content = (generate or (lambda: secrets.token_urlsafe(48)))()
        # Write then hard-link into place: the link either installs a complete file or fails because a
        # concurrent process won the race, in which case its value is the one everybody uses.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as handle:
            handle.write(content)
        os.chmod(handle.name, 0o600)
        try:
            os.link(handle.name, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(handle.name)
    return path.read_text()


def new_ed25519_private_key_pem() -> str:
    """A fresh Ed25519 key as a PKCS#8 PEM: the development default of a signing key (see :func:`secret`)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def database(*, default_name: str, var: Path) -> dict[str, Any]:
    """``DATABASES['default']`` from ``DATABASE_URL``, defaulting to a SQLite file under ``var/``."""
    url = config("DATABASE_URL", default=f"sqlite:///{var / default_name}.sqlite3")
    if url.startswith("sqlite:"):
        var.mkdir(parents=True, exist_ok=True)
        db = dj_database_url.parse(url)
        db["OPTIONS"] = {
            # Several gunicorn threads and a Celery worker share the file: wait for the lock instead of
            # failing, take the write lock at BEGIN so a read never has to upgrade (the classic
            # "database is locked"), and let readers proceed during writes.
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        return db
    return dj_database_url.parse(
        url,
        conn_max_age=config("DB_CONN_MAX_AGE", default=60, cast=int),
        conn_health_checks=True,
    )


def broker_url() -> str:
    return config("BROKER_URL", default="filesystem://localhost/")


def broker_transport(url: str) -> str | None:
    """Celery's ``broker_transport``: for the filesystem broker, ours (:mod:`common.broker`, whose messages
    appear whole), else None (the URL's scheme decides)."""
    return "common.broker:FilesystemTransport" if url.startswith("filesystem:") else None


def broker_transport_options(url: str, *, var: Path) -> dict[str, Any]:
    """Transport options for the Celery broker.

    The filesystem transport keeps one folder of message files shared by every process on the machine,
    and records topic-exchange bindings in its control folder, so events published by one service reach
    another service's worker as they would through RabbitMQ.
    """
    if url.startswith("filesystem:"):
        root = var / "broker"
        for folder in ("queue", "control"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(root / "queue"),
            "data_folder_out": str(root / "queue"),
            "control_folder": str(root / "control"),
            "store_processed": False,
            "polling_interval": 0.2,
        }
    # RabbitMQ: a publish returns only once the broker has taken responsibility for the message.
    return {"confirm_publish": True}


def cache(*, key_prefix: str) -> dict[str, Any]:
    """``CACHES['default']``: Redis when ``REDIS_URL`` is set, else a per-process local-memory cache."""
    redis_url = config("REDIS_URL", default="")
    if redis_url:
        return {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": key_prefix,
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": key_prefix}


def logging_config(*, service: str, level: str) -> dict[str, Any]:
    """Log lines are JSON objects (:mod:`common.logs`) naming the service, the request and the trace they
    belong to, written to stderr (the launcher sends each process's output to ``var/log/<process>.log``)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": "common.request_id.RequestIdLogFilter"},
            "trace_id": {"()": "common.tracing.TraceIdLogFilter"},
        },
        "formatters": {"json": {"()": "common.logs.JsonFormatter", "service": service}},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id", "trace_id"]}
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.request": {"level": "ERROR"},
            "django.server": {"level": "WARNING"},
        },
    }
