"""Versions, history and authors; the admin form and the REST API refusing bad values; ETags."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from common.internal_auth import mint_assertion
from configcenter import runtime
from configcenter.models import ConfigVersion, OutboxEvent
from configcenter.schema import InvalidConfig
from configcenter.services import VersionConflict, save_version
from proxy import breakers
from proxy.breakers import BreakerOpen

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/configcenter/configversion/add/"


def assertion(caller: str, *, audience: str = "gateway", secret: str | None = None) -> dict[str, str]:
    token = mint_assertion(issuer=caller, audience=audience, secret=secret or settings.INTERNAL_AUTH_SECRET)
    return {"HTTP_X_SERVICE_ASSERTION": token}


def test_each_save_appends_a_version_with_its_author_and_announces_it() -> None:
    first = save_version(service="users", profile="default", values={"breaker.failures": 3}, author="ann")
    second = save_version(
        service="users", profile="default", values={"breaker.failures": 4}, author="bob", comment="more tolerant"
    )

    history = list(ConfigVersion.objects.filter(service="users", profile="default").order_by("version"))
    assert [(v.version, v.author, v.values) for v in history] == [
        (1, "ann", {"breaker.failures": 3}),
        (2, "bob", {"breaker.failures": 4}),
    ]
    assert (first.version, second.comment) == (1, "more tolerant")
    events = OutboxEvent.objects.filter(type="config.changed").order_by("occurred_at")
    assert [event.data for event in events] == [
        {"service": "users", "profile": "default", "version": 1},
        {"service": "users", "profile": "default", "version": 2},
    ]
    # profiles are separate histories
    assert save_version(service="users", profile="production", values={}, author="ann").version == 1


def test_a_bad_value_is_never_saved_nor_announced() -> None:
    with pytest.raises(InvalidConfig):
        save_version(service="users", profile="default", values={"breaker.failures": 0}, author="ann")
    assert not ConfigVersion.objects.exists()
    assert not OutboxEvent.objects.exists()


def test_a_save_based_on_an_old_version_is_a_conflict() -> None:
    save_version(service="users", profile="default", values={}, author="ann")
    with pytest.raises(VersionConflict):
        save_version(service="users", profile="default", values={}, author="bob", expected_version=0)


# The admin


def test_the_admin_refuses_a_bad_value_with_the_keys_message(admin_client: Client) -> None:
    response = admin_client.post(
        ADD_URL,
        {"service": "gateway", "profile": "default", "values": '{"breaker.failures": 500, "nope": 1}', "comment": ""},
    )

    assert response.status_code == 200  # the form again, with its errors
    errors = response.context["adminform"].form.errors["values"]
    assert "breaker.failures: must be between 1 and 100" in errors
    assert any(error.startswith("nope: unknown key") for error in errors)
    assert not ConfigVersion.objects.exists()


def test_the_admin_saves_a_new_version_authored_by_the_signed_in_user(admin_client: Client, admin_user: User) -> None:
    save_version(service="gateway", profile="default", values={"breaker.failures": 3}, author="ann")

    # "Add" starts from the current values of the service and profile in the query string
    form = admin_client.get(f"{ADD_URL}?service=gateway&profile=default").context["adminform"].form
    assert form.initial["values"] == {"breaker.failures": 3}

    response = admin_client.post(
        ADD_URL,
        {"service": "gateway", "profile": "default", "values": '{"ratelimit.default": "5/minute"}', "comment": "tight"},
    )

    assert response.status_code == 302
    latest = ConfigVersion.objects.get(service="gateway", version=2)
    assert (latest.author, latest.values, latest.comment) == (
        admin_user.username,
        {"ratelimit.default": "5/minute"},
        "tight",
    )
    assert admin_client.get("/admin/configcenter/configversion/").status_code == 200


def test_versions_cannot_be_edited_or_deleted_in_the_admin(admin_client: Client) -> None:
    saved = save_version(service="gateway", profile="default", values={"breaker.failures": 3}, author="ann")
    url = f"/admin/configcenter/configversion/{saved.pk}/change/"

    assert admin_client.get(url).status_code == 200  # read-only view
    assert admin_client.post(url, {"service": "gateway", "profile": "default", "values": "{}"}).status_code == 403
    assert (
        admin_client.post(f"/admin/configcenter/configversion/{saved.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    assert ConfigVersion.objects.get(pk=saved.pk).values == {"breaker.failures": 3}


# The REST API


def test_a_service_reads_its_configuration_with_an_etag_and_revalidates_with_304(client: Client) -> None:
    save_version(service="users", profile="default", values={"feature.beta": True}, author="ann")

    first = client.get("/config/users/default/", **assertion("users"))
    assert first.status_code == 200
    assert first.json()["values"] == {"feature.beta": True}
    assert (first.json()["version"], first.json()["author"]) == (1, "ann")
    etag = first["ETag"]

    again = client.get("/config/users/default/", HTTP_IF_NONE_MATCH=etag, **assertion("users"))
    assert again.status_code == 304
    assert again["ETag"] == etag
    assert again.content == b""

    save_version(service="users", profile="default", values={"feature.beta": False}, author="bob")
    changed = client.get("/config/users/default/", HTTP_IF_NONE_MATCH=etag, **assertion("users"))
    assert changed.status_code == 200
    assert changed["ETag"] != etag
    assert changed.json()["values"] == {"feature.beta": False}


def test_nothing_saved_yet_is_version_0_with_no_values(client: Client) -> None:
    response = client.get("/config/orders/production/", **assertion("orders"))

    assert response.status_code == 200
    assert (response.json()["version"], response.json()["values"]) == (0, {})


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "not_authenticated"),
        ({"HTTP_X_SERVICE_ASSERTION": "garbage"}, 401, "invalid_service_assertion"),
        (assertion("users", secret="not-the-secret-not-the-secret-32b"), 401, "invalid_service_assertion"),
        (assertion("users", audience="orders"), 401, "invalid_service_assertion"),
        (assertion("orders"), 403, "permission_denied"),  # another service's configuration
    ],
)
def test_reads_need_a_valid_assertion_of_the_service_itself(
    client: Client, headers: dict[str, str], status: int, code: str
) -> None:
    save_version(service="users", profile="default", values={"feature.beta": True}, author="ann")

    response = client.get("/config/users/default/", **headers)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def put(client: Client, url: str, body: Any, **headers: str) -> Any:
    return client.put(url, json.dumps(body), content_type="application/json", **headers)


def test_the_api_refuses_a_bad_value_with_400_and_the_keys(admin_client: Client) -> None:
    response = put(admin_client, "/admin/config/users/default/", {"values": {"breaker.reset_timeout": 0}})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_config"
    assert error["details"] == {"breaker.reset_timeout": "must be between 1 and 600"}
    assert not ConfigVersion.objects.exists()


def test_staff_save_through_the_api_with_an_optimistic_lock(admin_client: Client, admin_user: User) -> None:
    created = put(admin_client, "/admin/config/users/default/", {"values": {"breaker.failures": 7}, "comment": "x"})
    assert created.status_code == 201
    assert (created.json()["version"], created.json()["author"]) == (1, admin_user.username)
    etag = created["ETag"]

    assert put(admin_client, "/admin/config/users/default/", {"values": {}}, HTTP_IF_MATCH=etag).status_code == 201
    stale = put(admin_client, "/admin/config/users/default/", {"values": {}}, HTTP_IF_MATCH=etag)
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "config_version_conflict"
    assert put(admin_client, "/admin/config/users/default/", {"nothing": 1}).json()["error"]["code"] == "invalid_config"


def test_services_and_non_staff_users_cannot_write(client: Client) -> None:
    assert put(client, "/config/users/default/", {"values": {}}, **assertion("users")).status_code == 403
    client.force_login(User.objects.create_user("clerk"))
    assert put(client, "/admin/config/users/default/", {"values": {}}).status_code == 403
    assert not ConfigVersion.objects.exists()


# The gateway's own runtime values


def test_the_gateway_loads_a_new_version_on_refresh_and_ignores_values_the_schema_refuses() -> None:
    assert runtime.refresh()
    assert runtime.value("ratelimit.default") is None  # nothing saved: the setting applies

    save_version(service="gateway", profile="default", values={"ratelimit.default": "7/minute"}, author="ann")
    save_version(service="gateway", profile="other", values={"ratelimit.default": "9/minute"}, author="ann")
    assert runtime.refresh()
    assert runtime.current() == (1, {"ratelimit.default": "7/minute"})

    # written around the schema (an older schema, a hand edit): never handed to the rate limiter
    ConfigVersion.objects.create(
        service="gateway", profile="default", version=2, values={"ratelimit.default": "lots", "breaker.failures": 4}
    )
    assert runtime.refresh()
    assert runtime.current() == (2, {"breaker.failures": 4})


def test_existing_breakers_take_their_thresholds_from_the_loaded_version(settings: Any) -> None:
    settings.BREAKER_FAILURES, settings.BREAKER_RESET_TIMEOUT, settings.BREAKER_REDIS_URL = 5, 10.0, ""
    breakers.reset()
    breaker = breakers.breaker("orders")  # made with the settings' values, before the version is loaded
    save_version(
        service="gateway", profile="default", values={"breaker.failures": 2, "breaker.reset_timeout": 30}, author="ann"
    )
    assert runtime.refresh()

    breaker.record(success=False, probe=False)
    assert breaker.state == "closed"
    breaker.record(success=False, probe=False)  # the second failure opens it: 2, not 5
    assert breaker.state == "open"
    with pytest.raises(BreakerOpen) as refused:
        breaker.admit()
    assert refused.value.retry_after > 10  # the 30 s cool-down, not the setting's 10
    breakers.reset()  # no open breaker for the next test
