from __future__ import annotations

import hashlib
import time
import uuid
from datetime import timedelta
from typing import Any

import jwt
import pytest
from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone
from kombu import Queue
from rest_framework.test import APIClient

from common.events import event_queue
from common.internal_auth import ALGORITHM as ASSERTION_ALGORITHM
from common.internal_auth import HEADER as ASSERTION_HEADER
from common.testing import EventBroker, assertion_headers
from users.keys import signing_key
from users.models import RefreshToken, User
from users.tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

SIGNUP_URL = "/api/v1/users/"
ME_URL = "/api/v1/users/me/"
TOKEN_URL = "/api/v1/auth/token"
REFRESH_URL = "/api/v1/auth/refresh"
LOGOUT_URL = "/api/v1/auth/logout"
JWKS_URL = "/.well-known/jwks.json"
STRONG_PASSWORD = "plum-orbit-7-lantern"


def detail_url(user_id: int) -> str:
    return f"/api/v1/users/{user_id}/"


def error_code(response: Any) -> str:
    return response.json()["error"]["code"]


def anonymous() -> dict[str, str]:
    return assertion_headers()


def as_user(user: User) -> dict[str, str]:
    return assertion_headers(user_id=user.id, is_staff=user.is_staff)


def sign_in(client: APIClient, email: str = "ann@example.com", password: str = PASSWORD) -> Any:
    return client.post(TOKEN_URL, {"email": email, "password": password}, format="json", headers=anonymous())


def decode_access(token: str) -> dict[str, Any]:
    return jwt.decode(
        token,
        signing_key().public_key(),
        algorithms=["EdDSA"],
        audience=settings.JWT_AUDIENCE,
        issuer=settings.JWT_ISSUER,
    )


# --- The gateway's service assertion -------------------------------------------------------------------


def test_request_without_assertion_is_refused_as_not_through_gateway(api_client: APIClient, user: User) -> None:
    response = api_client.get(ME_URL)

    assert response.status_code == 401
    assert error_code(response) == "gateway_required"


def test_public_endpoint_still_requires_an_assertion(api_client: APIClient) -> None:
    response = api_client.post(
        SIGNUP_URL, {"email": "new@example.com", "name": "New", "password": STRONG_PASSWORD}, format="json"
    )

    assert response.status_code == 401
    assert error_code(response) == "gateway_required"
    assert not User.objects.exists()


def test_assertion_signed_with_another_secret_is_refused(api_client: APIClient, user: User) -> None:
    now = int(time.time())
    forged = jwt.encode(
        {"iss": "gateway", "aud": "users", "iat": now, "exp": now + 60, "sub": str(user.id)},
        "not-the-internal-secret-but-long-enough-for-hs256",
        algorithm=ASSERTION_ALGORITHM,
    )

    response = api_client.get(ME_URL, headers={ASSERTION_HEADER: forged})

    assert response.status_code == 401
    assert error_code(response) == "invalid_service_assertion"


def test_assertion_for_another_service_is_refused(api_client: APIClient, user: User) -> None:
    response = api_client.get(ME_URL, headers=assertion_headers(user_id=user.id, audience="orders"))

    assert response.status_code == 401
    assert error_code(response) == "invalid_service_assertion"


def test_expired_assertion_is_refused(api_client: APIClient, user: User) -> None:
    issued = int(time.time()) - 600
    expired = jwt.encode(
        {"iss": "gateway", "aud": "users", "iat": issued, "exp": issued + 60, "sub": str(user.id)},
        settings.INTERNAL_AUTH_SECRET,
        algorithm=ASSERTION_ALGORITHM,
    )

    response = api_client.get(ME_URL, headers={ASSERTION_HEADER: expired})

    assert response.status_code == 401
    assert error_code(response) == "invalid_service_assertion"


def test_client_sent_user_id_header_grants_nothing(api_client: APIClient, user: User) -> None:
    without_assertion = api_client.get(ME_URL, headers={"X-User-Id": str(user.id)})
    with_anonymous_assertion = api_client.get(ME_URL, headers={"X-User-Id": str(user.id), **anonymous()})

    assert without_assertion.status_code == 401
    assert error_code(without_assertion) == "gateway_required"
    assert with_anonymous_assertion.status_code == 401
    assert error_code(with_anonymous_assertion) == "not_authenticated"


# --- Sign-up -------------------------------------------------------------------------------------------


def test_signup_creates_user_and_returns_it_without_password(api_client: APIClient) -> None:
    response = api_client.post(
        SIGNUP_URL,
        {"email": "  New.Person@Example.COM ", "name": "New Person", "password": STRONG_PASSWORD},
        format="json",
        headers=anonymous(),
    )

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "email", "name", "is_staff", "date_joined"}
    assert body["email"] == "new.person@example.com"
    assert body["name"] == "New Person"
    assert body["is_staff"] is False
    created = User.objects.get(pk=body["id"])
    assert created.check_password(STRONG_PASSWORD)
    assert created.password != STRONG_PASSWORD


def test_signup_cannot_grant_itself_staff(api_client: APIClient) -> None:
    response = api_client.post(
        SIGNUP_URL,
        {"email": "sneaky@example.com", "name": "Sneaky", "password": STRONG_PASSWORD, "is_staff": True},
        format="json",
        headers=anonymous(),
    )

    assert response.status_code == 201
    assert response.json()["is_staff"] is False
    assert not User.objects.get().is_staff


def test_signup_with_taken_email_in_other_case_conflicts(api_client: APIClient, user: User) -> None:
    response = api_client.post(
        SIGNUP_URL,
        {"email": "ANN@example.com", "name": "Impostor", "password": STRONG_PASSWORD},
        format="json",
        headers=anonymous(),
    )

    assert response.status_code == 409
    assert error_code(response) == "email_taken"
    assert User.objects.count() == 1


def test_signup_losing_a_race_for_the_email_conflicts(
    api_client: APIClient, user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the duplicate check sees nothing, as when a concurrent sign-up commits right after it
    monkeypatch.setattr(QuerySet, "exists", lambda self: False)

    response = api_client.post(
        SIGNUP_URL,
        {"email": "ann@example.com", "name": "Twin", "password": STRONG_PASSWORD},
        format="json",
        headers=anonymous(),
    )

    assert response.status_code == 409
    assert error_code(response) == "email_taken"


def test_signup_with_weak_password_reports_the_validators_messages(api_client: APIClient) -> None:
    response = api_client.post(
        SIGNUP_URL, {"email": "new@example.com", "name": "New", "password": "12345"}, format="json", headers=anonymous()
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert set(error["details"]) == {"password"}
    assert any("too short" in message for message in error["details"]["password"])
    assert any("entirely numeric" in message for message in error["details"]["password"])
    assert not User.objects.exists()


def test_signup_with_password_like_the_email_is_rejected(api_client: APIClient) -> None:
    response = api_client.post(
        SIGNUP_URL,
        {"email": "marmalade.sky@example.com", "name": "M", "password": "marmalade.sky"},
        format="json",
        headers=anonymous(),
    )

    assert response.status_code == 400
    assert "password" in response.json()["error"]["details"]


def test_signup_with_invalid_email_is_a_field_error(api_client: APIClient) -> None:
    response = api_client.post(
        SIGNUP_URL,
        {"email": "not-an-email", "name": "New", "password": STRONG_PASSWORD},
        format="json",
        headers=anonymous(),
    )

    assert response.status_code == 400
    assert error_code(response) == "validation_error"
    assert set(response.json()["error"]["details"]) == {"email"}


def test_signup_without_fields_lists_each_missing_field(api_client: APIClient) -> None:
    response = api_client.post(SIGNUP_URL, {}, format="json", headers=anonymous())

    assert response.status_code == 400
    assert error_code(response) == "validation_error"
    assert set(response.json()["error"]["details"]) == {"email", "name", "password"}


def test_signup_with_malformed_json_is_a_400(api_client: APIClient) -> None:
    response = api_client.post(SIGNUP_URL, "{not json", content_type="application/json", headers=anonymous())

    assert response.status_code == 400
    assert error_code(response) == "malformed_request"


def test_signup_publishes_user_created_through_the_outbox(
    api_client: APIClient, event_broker: EventBroker, django_capture_on_commit_callbacks: Any
) -> None:
    queue = event_queue("users", settings.EVENT_HANDLERS)
    with event_broker.connection() as connection:
        queue(connection.default_channel).declare()

        with django_capture_on_commit_callbacks(execute=True):
            response = api_client.post(
                SIGNUP_URL,
                {"email": "new@example.com", "name": "New", "password": STRONG_PASSWORD},
                format="json",
                headers=anonymous(),
            )
        assert event_broker.relay() == 1  # what the relay process does

        message = connection.SimpleQueue(Queue(queue.name, no_declare=True)).get(timeout=2)
    message.ack()
    event = message.decode()[1]["event"]
    assert response.status_code == 201
    assert event["type"] == "user.created"
    assert event["source"] == "users"
    assert event["data"] == {"user_id": response.json()["id"], "email": "new@example.com", "name": "New"}


def test_refused_signup_publishes_nothing(
    api_client: APIClient, user: User, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        api_client.post(
            SIGNUP_URL,
            {"email": "ann@example.com", "name": "Twin", "password": STRONG_PASSWORD},
            format="json",
            headers=anonymous(),
        )

    assert callbacks == []


# --- Sign-in -------------------------------------------------------------------------------------------


def test_sign_in_returns_access_and_refresh_tokens(api_client: APIClient, user: User) -> None:
    response = sign_in(api_client, email=" Ann@Example.com")

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == settings.JWT_ACCESS_TOKEN_LIFETIME
    claims = decode_access(body["access"])
    assert claims["sub"] == str(user.id)
    assert claims["typ"] == "access"
    assert claims["staff"] is False
    assert claims["exp"] - claims["iat"] == settings.JWT_ACCESS_TOKEN_LIFETIME
    uuid.UUID(claims["jti"])
    stored = RefreshToken.objects.get()
    assert stored.user == user
    assert stored.revoked_at is None
    assert stored.rotated_at is None


def test_staff_access_token_says_so(api_client: APIClient) -> None:
    UserFactory(email="boss@example.com", is_staff=True)

    response = sign_in(api_client, email="boss@example.com")

    assert decode_access(response.json()["access"])["staff"] is True


@pytest.mark.parametrize(
    ("email", "password"),
    [("ann@example.com", "wrong password"), ("nobody@example.com", PASSWORD)],
    ids=["wrong-password", "unknown-email"],
)
def test_sign_in_with_bad_credentials_gives_one_indistinct_error(
    api_client: APIClient, user: User, email: str, password: str
) -> None:
    response = sign_in(api_client, email=email, password=password)

    assert response.status_code == 401
    assert response.json()["error"] == {
        "code": "invalid_credentials",
        "message": "The email or password is incorrect.",
        "details": {},
    }
    assert not RefreshToken.objects.exists()


def test_inactive_user_cannot_sign_in_even_with_the_right_password(api_client: APIClient, user: User) -> None:
    User.objects.filter(pk=user.pk).update(is_active=False)

    response = sign_in(api_client)

    assert response.status_code == 401
    assert error_code(response) == "invalid_credentials"


def test_sign_in_without_password_is_a_field_error(api_client: APIClient) -> None:
    response = api_client.post(TOKEN_URL, {"email": "ann@example.com"}, format="json", headers=anonymous())

    assert response.status_code == 400
    assert set(response.json()["error"]["details"]) == {"password"}


def test_sign_in_attempts_are_rate_limited(api_client: APIClient, user: User, settings: Any) -> None:
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"login": "2/min"}}

    first = sign_in(api_client, password="wrong")
    second = sign_in(api_client)
    third = sign_in(api_client)

    assert [first.status_code, second.status_code] == [401, 200]
    assert third.status_code == 429
    assert error_code(third) == "rate_limited"
    assert 0 < int(third.headers["Retry-After"]) <= 60


def test_failed_sign_ins_lock_the_account_not_the_address(api_client: APIClient, user: User, settings: Any) -> None:
    # given the limit of failures for Ann's account spent, from addresses the per-address limit allows
    settings.LOGIN_FAILURE_LIMIT = 3
    for attempt in range(3):
        failed = api_client.post(
            TOKEN_URL,
            {"email": "ANN@example.com", "password": "guess"},
            format="json",
            headers={**anonymous(), "X-Forwarded-For": f"203.0.113.{attempt}"},
        )
        assert failed.status_code == 401

    # when Ann signs in with the right password, and Bob from the same address
    UserFactory(email="bob@example.com")
    locked = sign_in(api_client)
    other = sign_in(api_client, email="bob@example.com")

    # then Ann's account waits out the window, Bob's is untouched
    assert locked.status_code == 429
    assert error_code(locked) == "too_many_attempts"
    assert 0 < int(locked.headers["Retry-After"]) <= settings.LOGIN_FAILURE_WINDOW
    assert other.status_code == 200


def test_the_per_address_limit_counts_the_address_the_gateway_appended(
    api_client: APIClient, user: User, settings: Any
) -> None:
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"login": "1/min"}}
    assert sign_in(api_client).status_code == 200

    # a client-made-up hop on the left buys no fresh quota
    spoofed = api_client.post(
        TOKEN_URL,
        {"email": "ann@example.com", "password": PASSWORD},
        format="json",
        headers={**anonymous(), "X-Forwarded-For": "198.51.100.7, 127.0.0.1"},
    )

    assert spoofed.status_code == 429
    assert error_code(spoofed) == "rate_limited"


# --- Refresh and sign-out ----------------------------------------------------------------------------


def post_refresh(client: APIClient, token: str) -> Any:
    return client.post(REFRESH_URL, {"refresh": token}, format="json", headers=anonymous())


def post_logout(client: APIClient, token: str) -> Any:
    return client.post(LOGOUT_URL, {"refresh": token}, format="json", headers=anonymous())


def test_refresh_returns_a_new_access_token_and_the_next_refresh_token(api_client: APIClient, user: User) -> None:
    refresh = sign_in(api_client).json()["refresh"]

    response = post_refresh(api_client, refresh)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access", "refresh", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["refresh"] != refresh
    assert decode_access(body["access"])["sub"] == str(user.id)
    assert post_refresh(api_client, body["refresh"]).status_code == 200


def test_a_refresh_token_is_stored_only_as_its_hash(api_client: APIClient, user: User) -> None:
    refresh = sign_in(api_client).json()["refresh"]

    stored = RefreshToken.objects.get()
    assert stored.token_hash == hashlib.sha256(refresh.encode()).hexdigest()
    assert refresh not in str(list(RefreshToken.objects.values()))


def test_a_spent_refresh_token_is_refused_as_reused_and_ends_the_session(api_client: APIClient, user: User) -> None:
    first = sign_in(api_client).json()["refresh"]
    second = post_refresh(api_client, first).json()["refresh"]

    reused = post_refresh(api_client, first)

    assert reused.status_code == 401
    assert error_code(reused) == "token_reused"
    # the thief or the client, whoever holds the successor, is signed out too
    assert error_code(post_refresh(api_client, second)) == "token_revoked"


def test_refresh_with_an_unknown_token_is_refused(api_client: APIClient) -> None:
    response = post_refresh(api_client, "not-a-token-we-issued")

    assert response.status_code == 401
    assert error_code(response) == "invalid_token"
    assert response.headers["Content-Type"] == "application/json"


def test_expired_refresh_token_is_refused(api_client: APIClient, user: User) -> None:
    refresh = sign_in(api_client).json()["refresh"]
    RefreshToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    response = post_refresh(api_client, refresh)

    assert response.status_code == 401
    assert error_code(response) == "token_expired"


def test_revoked_refresh_token_is_refused(api_client: APIClient, user: User) -> None:
    refresh = sign_in(api_client).json()["refresh"]
    RefreshToken.objects.update(revoked_at=timezone.now())

    response = post_refresh(api_client, refresh)

    assert response.status_code == 401
    assert error_code(response) == "token_revoked"


def test_access_token_cannot_be_used_as_refresh_token(api_client: APIClient, user: User) -> None:
    access = sign_in(api_client).json()["access"]

    response = post_refresh(api_client, access)

    assert response.status_code == 400  # longer than any refresh token: not even looked up
    assert set(response.json()["error"]["details"]) == {"refresh"}


def test_refresh_for_deactivated_user_is_refused(api_client: APIClient, user: User) -> None:
    refresh = sign_in(api_client).json()["refresh"]
    User.objects.filter(pk=user.pk).update(is_active=False)

    response = post_refresh(api_client, refresh)

    assert response.status_code == 401
    assert error_code(response) == "invalid_token"


def test_refresh_for_deleted_user_is_refused(api_client: APIClient, user: User) -> None:
    refresh = sign_in(api_client).json()["refresh"]
    user.delete()

    response = post_refresh(api_client, refresh)

    assert response.status_code == 401
    assert error_code(response) == "invalid_token"


def test_refresh_without_token_is_a_field_error(api_client: APIClient) -> None:
    response = api_client.post(REFRESH_URL, {}, format="json", headers=anonymous())

    assert response.status_code == 400
    assert set(response.json()["error"]["details"]) == {"refresh"}


def test_logout_revokes_the_refresh_token_and_its_successors(api_client: APIClient, user: User) -> None:
    first = sign_in(api_client).json()["refresh"]
    second = post_refresh(api_client, first).json()["refresh"]
    other_session = sign_in(api_client).json()["refresh"]

    response = post_logout(api_client, second)

    assert response.status_code == 204
    assert error_code(post_refresh(api_client, second)) == "token_revoked"
    assert set(RefreshToken.objects.exclude(revoked_at=None).values_list("revoked_reason", flat=True)) == {"logout"}
    # another sign-in (another device) is a session of its own
    assert post_refresh(api_client, other_session).status_code == 200


@pytest.mark.parametrize("token", ["never-issued", "twice"])
def test_logout_with_an_unknown_or_already_revoked_token_is_no_error(
    api_client: APIClient, user: User, token: str
) -> None:
    if token == "twice":
        token = sign_in(api_client).json()["refresh"]
        post_logout(api_client, token)

    response = post_logout(api_client, token)

    assert response.status_code == 204


def test_logout_without_token_is_a_field_error(api_client: APIClient) -> None:
    response = api_client.post(LOGOUT_URL, {}, format="json", headers=anonymous())

    assert response.status_code == 400
    assert set(response.json()["error"]["details"]) == {"refresh"}


# --- Reading users -------------------------------------------------------------------------------------


def test_me_returns_the_caller(api_client: APIClient, user: User) -> None:
    response = api_client.get(ME_URL, headers=as_user(user))

    assert response.status_code == 200
    assert response.json()["id"] == user.id
    assert response.json()["email"] == "ann@example.com"


def test_me_for_deactivated_user_is_not_found(api_client: APIClient, user: User) -> None:
    User.objects.filter(pk=user.pk).update(is_active=False)

    response = api_client.get(ME_URL, headers=as_user(user))

    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_me_for_deleted_user_is_not_found(api_client: APIClient) -> None:
    response = api_client.get(ME_URL, headers=assertion_headers(user_id=987654))

    assert response.status_code == 404


def test_user_reads_own_record_by_id(api_client: APIClient, user: User) -> None:
    response = api_client.get(detail_url(user.id), headers=as_user(user))

    assert response.status_code == 200
    assert response.json()["email"] == user.email


def test_order_service_confirms_the_user_it_acts_for(api_client: APIClient, user: User) -> None:
    response = api_client.get(detail_url(user.id), headers=assertion_headers(user_id=user.id, caller="orders"))

    assert response.status_code == 200


def test_someone_elses_record_is_not_found(api_client: APIClient, user: User) -> None:
    other = UserFactory()

    response = api_client.get(detail_url(other.id), headers=as_user(user))

    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_staff_can_read_any_record_including_deactivated(api_client: APIClient, user: User) -> None:
    staff = UserFactory(is_staff=True)
    User.objects.filter(pk=user.pk).update(is_active=False)

    response = api_client.get(detail_url(user.id), headers=as_user(staff))

    assert response.status_code == 200
    assert response.json()["id"] == user.id


def test_staff_reading_unknown_id_gets_not_found(api_client: APIClient) -> None:
    response = api_client.get(detail_url(987654), headers=assertion_headers(user_id=1, is_staff=True))

    assert response.status_code == 404


def test_staff_reading_an_id_beyond_the_integer_range_gets_not_found(api_client: APIClient) -> None:
    response = api_client.get(detail_url(10**30), headers=assertion_headers(user_id=1, is_staff=True))

    assert response.status_code == 404


def test_reading_a_user_anonymously_is_unauthenticated(api_client: APIClient, user: User) -> None:
    response = api_client.get(detail_url(user.id), headers=anonymous())

    assert response.status_code == 401
    assert error_code(response) == "not_authenticated"


# --- JWKS and schema -----------------------------------------------------------------------------------


def test_jwks_verifies_tokens_from_the_token_endpoint(api_client: APIClient, user: User) -> None:
    access = sign_in(api_client).json()["access"]

    response = api_client.get(JWKS_URL)  # no assertion: the gateway fetches it directly

    assert response.status_code == 200
    assert "public" in response.headers["Cache-Control"]
    assert "max-age=60" in response.headers["Cache-Control"]
    [jwk] = response.json()["keys"]
    assert jwk["kid"] == jwt.get_unverified_header(access)["kid"]
    assert "d" not in jwk  # the private part never leaves
    claims = jwt.decode(
        access,
        jwt.PyJWK(jwk).key,
        algorithms=["EdDSA"],
        audience=settings.JWT_AUDIENCE,
        issuer=settings.JWT_ISSUER,
    )
    assert claims["sub"] == str(user.id)


def test_openapi_schema_is_served(api_client: APIClient) -> None:
    response = api_client.get("/api/schema/users/", headers={"Accept": "application/json"})

    assert response.status_code == 200
    assert "/api/v1/auth/token" in response.json()["paths"]
