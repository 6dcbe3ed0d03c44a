from typing import Any

from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle


class ScopedSettingsRateThrottle(ScopedRateThrottle):
    """DRF's scoped throttle, reading the rate from the settings on every request.

    DRF copies ``DEFAULT_THROTTLE_RATES`` into a class attribute at import, so a changed setting (an
    override in a test, say) would otherwise be ignored.

    The client is identified by ``X-Forwarded-For``, which the gateway (our only proxy) sets to the client's
    address, falling back to the peer address.
    """

    def get_rate(self) -> Any:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
