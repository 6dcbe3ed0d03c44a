"""drf-spectacular description of the service assertion every API call carries (imported by the app config)."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ServiceAssertionScheme(OpenApiAuthenticationExtension):
    target_class = "common.internal_auth.ServiceAssertionAuthentication"
    name = "ServiceAssertion"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "X-Service-Assertion",
            "description": "Short-lived HS256 JWT minted by the gateway or a calling service for this service.",
        }
