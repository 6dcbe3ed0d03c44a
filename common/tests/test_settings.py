"""The settings helpers read the environment at call time, so each test sets exactly the variables it is about
(and removes any the developer's shell may have set)."""

from __future__ import annotations

import multiprocessing
import stat
import threading
from multiprocessing.synchronize import Barrier as ProcessBarrier
from pathlib import Path
from queue import Queue
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.sqlite3.base import DatabaseWrapper

from common import settings as envs

SECRET = "COMMON_TESTS_SECRET"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (SECRET, "ENVIRONMENT", "DATABASE_URL", "DB_CONN_MAX_AGE", "BROKER_URL", "REDIS_URL", "VAR_DIR"):
        monkeypatch.delenv(name, raising=False)


def secret_file(var: Path, scope: str = "shared") -> Path:
    return var / "secrets" / scope / SECRET.lower()


def test_secret_from_the_environment_wins_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET, "from-the-environment")

    assert envs.secret(SECRET, var=tmp_path) == "from-the-environment"
    assert not (tmp_path / "secrets").exists()


def test_secret_in_development_is_generated_once_with_owner_only_permissions(tmp_path: Path) -> None:
    generated: list[str] = []

    def generate() -> str:
        generated.append(f"value-{len(generated)}")
        return generated[-1]

    first = envs.secret(SECRET, var=tmp_path, scope="users", generate=generate)
    second = envs.secret(SECRET, var=tmp_path, scope="users", generate=generate)

    assert first == second == "value-0"
    assert generated == ["value-0"]
    path = secret_file(tmp_path, "users")
    assert path.read_text() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [SECRET.lower()]  # no temporary file left behind


def test_secret_default_generator_makes_a_long_random_value_per_scope(tmp_path: Path) -> None:
    shared = envs.secret(SECRET, var=tmp_path)
    own = envs.secret(SECRET, var=tmp_path, scope="orders")

    assert len(shared) >= 64
    assert shared != own
    assert secret_file(tmp_path).read_text() == shared


def test_secret_concurrent_first_calls_from_threads_all_get_the_same_value(tmp_path: Path) -> None:
    threads_count = 16
    barrier = threading.Barrier(threads_count)
    results: Queue[str] = Queue()

    def call() -> None:
        barrier.wait()
        results.put(envs.secret(SECRET, var=tmp_path))

    threads = [threading.Thread(target=call) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    values = [results.get_nowait() for _ in range(threads_count)]
    assert len(set(values)) == 1
    assert secret_file(tmp_path).read_text() == values[0]
    assert [p.name for p in secret_file(tmp_path).parent.iterdir()] == [SECRET.lower()]


def secret_in_another_process(var: str, barrier: ProcessBarrier, results: multiprocessing.Queue[str]) -> None:
    barrier.wait()
    results.put(envs.secret(SECRET, var=Path(var)))


def test_secret_concurrent_first_calls_from_processes_all_get_the_same_value(tmp_path: Path) -> None:
    # Given several freshly started processes (as `manage_all.py up` starts them) racing to create the secret
    context = multiprocessing.get_context("spawn")
    processes_count = 4
    barrier = context.Barrier(processes_count)
    results: multiprocessing.Queue[str] = context.Queue()
    processes = [
        context.Process(target=secret_in_another_process, args=(str(tmp_path), barrier, results))
        for _ in range(processes_count)
    ]

    # When each asks for it at the same moment
    for process in processes:
        process.start()
    values = [results.get(timeout=30) for _ in range(processes_count)]
    for process in processes:
        process.join(timeout=10)

    # Then they all agree, on the value stored
    assert all(process.exitcode == 0 for process in processes)
    assert len(set(values)) == 1
    assert secret_file(tmp_path).read_text() == values[0]


def test_secret_in_production_without_the_variable_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    envs.secret(SECRET, var=tmp_path)  # a development value already on disk is no excuse either
    monkeypatch.setenv("ENVIRONMENT", "production")

    with pytest.raises(ImproperlyConfigured, match=SECRET):
        envs.secret(SECRET, var=tmp_path)


def test_secret_in_production_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv(SECRET, "set-by-the-deployment")

    assert envs.secret(SECRET, var=tmp_path) == "set-by-the-deployment"


def test_var_dir_defaults_beside_the_project_and_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert envs.var_dir(tmp_path / "user_project") == (tmp_path / "var").resolve()

    monkeypatch.setenv("VAR_DIR", str(tmp_path / "elsewhere"))

    assert envs.var_dir(tmp_path / "user_project") == (tmp_path / "elsewhere").resolve()


def test_database_defaults_to_a_sqlite_file_under_var_that_django_opens_in_wal_mode(
    tmp_path: Path, django_db_blocker: Any
) -> None:
    var = tmp_path / "var"

    db = envs.database(default_name="orders", var=var)

    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == str(var / "orders.sqlite3")
    assert db["OPTIONS"] == {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    assert var.is_dir()
    # The options are ones Django's SQLite backend accepts and applies.
    connection = DatabaseWrapper({**db, "TIME_ZONE": None, "CONN_MAX_AGE": 0, "AUTOCOMMIT": True}, alias="probe")
    try:
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            assert cursor.fetchone()[0] == "wal"
    finally:
        connection.close()
    assert (var / "orders.sqlite3").exists()


def test_database_from_a_postgres_url_keeps_connections_and_checks_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://shop:s3cret@db.internal:5433/orders")

    db = envs.database(default_name="orders", var=Path("/nonexistent/var"))

    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["NAME"], db["USER"], db["PASSWORD"], db["HOST"], db["PORT"]) == (
        "orders",
        "shop",
        "s3cret",
        "db.internal",
        5433,
    )
    assert db["CONN_MAX_AGE"] == 60
    assert db["CONN_HEALTH_CHECKS"] is True
    assert not Path("/nonexistent/var").exists()


def test_database_connection_age_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://shop@127.0.0.1/orders")
    monkeypatch.setenv("DB_CONN_MAX_AGE", "0")

    assert envs.database(default_name="orders", var=Path("/nonexistent/var"))["CONN_MAX_AGE"] == 0


def test_broker_url_defaults_to_the_filesystem_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    assert envs.broker_url() == "filesystem://localhost/"

    monkeypatch.setenv("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")

    assert envs.broker_url() == "amqp://guest:guest@127.0.0.1:5672//"


def test_broker_transport_options_for_the_filesystem_share_one_folder_under_var(tmp_path: Path) -> None:
    options = envs.broker_transport_options("filesystem://localhost/", var=tmp_path)

    root = tmp_path / "broker"
    assert options == {
        "data_folder_in": str(root / "queue"),
        "data_folder_out": str(root / "queue"),
        "control_folder": str(root / "control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }
    assert (root / "queue").is_dir()
    assert (root / "control").is_dir()


def test_broker_transport_options_for_rabbitmq_confirm_publishes_and_create_no_folders(tmp_path: Path) -> None:
    options = envs.broker_transport_options("amqp://guest:guest@127.0.0.1:5672//", var=tmp_path)

    assert options == {"confirm_publish": True}
    assert list(tmp_path.iterdir()) == []


def test_cache_without_redis_is_local_memory() -> None:
    assert envs.cache(key_prefix="orders") == {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "orders",
    }


def test_cache_with_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/3")

    assert envs.cache(key_prefix="orders") == {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/3",
        "KEY_PREFIX": "orders",
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
    }
