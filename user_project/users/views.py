from __future__ import annotations

from dataclasses import asdict

from django.utils.cache import patch_cache_control
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from common.schema import error_response
from users.keys import published_jwks
from users.selectors import user_get_active, user_get_visible
from users.serializers import (
    JwksSerializer,
    TokenObtainInputSerializer,
    TokenPairOutputSerializer,
    TokenRefreshInputSerializer,
    UserCreateInputSerializer,
    UserOutputSerializer,
)
from users.services import auth_logout, auth_token_obtain, auth_token_refresh, user_create
from users.throttling import ScopedSettingsRateThrottle

# Verifiers that honour Cache-Control (the gateway has its own JWKS_CACHE_TTL) see a retired key go within
# a minute; the gateway's default TTL is the same.
JWKS_MAX_AGE_SECONDS = 60


UNAUTHENTICATED = error_response("No valid service assertion, or no signed-in user.")


class UserCreateApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="users_create",
        summary="Sign up",
        request=UserCreateInputSerializer,
        responses={
            201: UserOutputSerializer,
            400: error_response("Invalid fields (validation_error), including a password the validators reject."),
            401: error_response("No valid service assertion."),
            409: error_response("The email address is taken (email_taken)."),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = UserCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = user_create(**serializer.validated_data)
        return Response(UserOutputSerializer(user).data, status=status.HTTP_201_CREATED)


class UserMeApi(APIView):
    @extend_schema(
        operation_id="users_me",
        summary="The signed-in user",
        responses={
            200: UserOutputSerializer,
            401: UNAUTHENTICATED,
            404: error_response("The account no longer exists."),
        },
    )
    def get(self, request: Request) -> Response:
        user = user_get_active(user_id=request.user.id)
        return Response(UserOutputSerializer(user).data)


class UserDetailApi(APIView):
    @extend_schema(
        operation_id="users_retrieve",
        summary="A user: yourself, or anyone for staff",
        responses={
            200: UserOutputSerializer,
            401: UNAUTHENTICATED,
            404: error_response("No such user visible to you."),
        },
    )
    def get(self, request: Request, user_id: int) -> Response:
        user = user_get_visible(user_id=user_id, viewer=request.user)
        return Response(UserOutputSerializer(user).data)


class TokenObtainApi(APIView):
    permission_classes = [AllowAny]
    throttle_classes = [ScopedSettingsRateThrottle]
    throttle_scope = "login"

    @extend_schema(
        operation_id="auth_token",
        summary="Sign in: exchange email and password for tokens",
        request=TokenObtainInputSerializer,
        responses={
            200: TokenPairOutputSerializer,
            400: error_response("Invalid fields (validation_error)."),
            401: error_response("Wrong email or password, or inactive account (invalid_credentials)."),
            429: error_response(
                "Too many attempts from this address (rate_limited) or failed ones for this account "
                "(too_many_attempts); see Retry-After."
            ),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = TokenObtainInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tokens = auth_token_obtain(**serializer.validated_data)
        return Response(TokenPairOutputSerializer(asdict(tokens)).data)


class TokenRefreshApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="auth_refresh",
        summary="Spend a refresh token for a new access token and the next refresh token",
        description=(
            "A refresh token works once: the response carries its successor. Presenting a spent one again "
            "revokes every token of its sign-in (token_reused)."
        ),
        request=TokenRefreshInputSerializer,
        responses={
            200: TokenPairOutputSerializer,
            400: error_response("Invalid fields (validation_error)."),
            401: error_response(
                "Unknown (invalid_token), expired (token_expired), revoked (token_revoked) or already used "
                "(token_reused) refresh token."
            ),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = TokenRefreshInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tokens = auth_token_refresh(**serializer.validated_data)
        return Response(TokenPairOutputSerializer(asdict(tokens)).data)


class LogoutApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="auth_logout",
        summary="Sign out: revoke a refresh token and every token of its sign-in",
        description=(
            "204 whether or not the token was still live. Access tokens already issued expire on their own "
            "within minutes."
        ),
        request=TokenRefreshInputSerializer,
        responses={204: None, 400: error_response("Invalid fields (validation_error).")},
    )
    def post(self, request: Request) -> Response:
        serializer = TokenRefreshInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        auth_logout(**serializer.validated_data)
        return Response(status=status.HTTP_204_NO_CONTENT)


class JwksApi(APIView):
    """The public keys that verify our tokens. Public: the gateway fetches it without an assertion."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(operation_id="jwks", summary="JSON Web Key Set", auth=[], responses={200: JwksSerializer})
    def get(self, request: Request) -> Response:
        response = Response({"keys": published_jwks()})
        patch_cache_control(response, public=True, max_age=JWKS_MAX_AGE_SECONDS)
        return response
