"""The same code runs on the embedded defaults or on PostgreSQL, RabbitMQ and Redis: check that each
service really used the backends this run configured."""

from __future__ import annotations

import json
import os

import pytest
from conftest import sign_up

import manage_all

REAL_MODE = bool(os.environ.get("BROKER_URL") or os.environ.get("USER_DATABASE_URL"))


@pytest.mark.skipif(REAL_MODE, reason="embedded mode only")
def test_embedded_mode_keeps_everything_under_var(system: manage_all.System) -> None:
    sign_up(system.url("gateway"))

    for service in manage_all.SERVICES:
        assert (system.var_dir / f"{service.name}.sqlite3").stat().st_size > 0, service.name
    # kombu's filesystem transport records each binding as [routing key, pattern, queue]
    bindings = json.loads((system.var_dir / "broker" / "control" / "events.exchange").read_text())
    bound = {(routing_key, queue) for routing_key, _pattern, queue in bindings}
    assert {("user.created", "users.events"), ("order.confirmed", "users.events")} <= bound


@pytest.mark.skipif(not REAL_MODE, reason="real mode only")
def test_real_mode_uses_postgresql_rabbitmq_and_redis(system: manage_all.System) -> None:
    import psycopg
    import redis
    from kombu import Connection

    _, account = sign_up(system.url("gateway"))

    with psycopg.connect(system.base_env["USER_DATABASE_URL"]) as connection:
        row = connection.execute("SELECT name FROM users_user WHERE id = %s", [account["id"]]).fetchone()
    assert row == (account["name"],)
    for service in manage_all.SERVICES:
        assert not (system.var_dir / f"{service.name}.sqlite3").exists(), service.name

    with Connection(os.environ["BROKER_URL"]) as broker:
        name, _messages, consumers = broker.default_channel.queue_declare("users.events", passive=True)
    assert name == "users.events"
    assert consumers >= 1  # the user service's worker

    assert redis.Redis.from_url(os.environ["REDIS_URL"]).keys("users:*throttle*")  # sign-in throttling
