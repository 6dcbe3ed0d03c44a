"""How the services' OpenAPI schemas describe the service assertion every API call carries. Importing this
module registers the description with drf-spectacular (the common app does it on start)."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from common.internal_auth import HEADER


class ServiceAssertionScheme(OpenApiAuthenticationExtension):
    target_class = "common.internal_auth.ServiceAssertionAuthentication"
    name = "ServiceAssertion"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": HEADER,
            "description": "Short-lived HS256 JWT minted by the gateway (or a calling service) for this service; "
            "clients authenticate at the gateway with their access token instead.",
        }
