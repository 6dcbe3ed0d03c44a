"""How the OpenAPI schema describes the service assertion every API call carries."""

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
            "description": "Minted by the gateway (or a calling service); clients authenticate at the gateway.",
        }
