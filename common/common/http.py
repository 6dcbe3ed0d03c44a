"""The client one service uses to call another.

Every call carries the request id and a service assertion acting for the same user, has connect and read
timeouts, and is retried only where that is safe: connection failures (nothing was sent) for any method,
and 502/503/504 or read errors only for idempotent methods. Failures surface as the upstream errors of
:mod:`common.errors`, so a view never has to translate them.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ReadTimeoutError
from urllib3.util.retry import Retry

from common.errors import UpstreamTimeout, UpstreamUnavailable
from common.internal_auth import HEADER as ASSERTION_HEADER
from common.internal_auth import Principal, mint_assertion
from common.request_id import HEADER as REQUEST_ID_HEADER
from common.request_id import current_or_new_request_id


class ServiceClient:
    def __init__(
        self,
        *,
        base_url: str,
        caller: str,
        audience: str,
        secret: str,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        retries: int = 2,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.caller = caller
        self.audience = audience
        self._secret = secret
        self.timeout = (connect_timeout, read_timeout)
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            status_forcelist=(502, 503, 504),
            allowed_methods=Retry.DEFAULT_ALLOWED_METHODS,  # idempotent methods only
            backoff_factor=0.1,
            backoff_jitter=0.1,
            raise_on_status=False,
            respect_retry_after_header=False,
        )
        self.session = requests.Session()
        # Reading proxy settings from the environment on every call costs a lot of CPU and has no use
        # between services on a private network.
        self.session.trust_env = False
        self.session.mount("http://", HTTPAdapter(pool_maxsize=32, max_retries=retry))
        self.session.mount("https://", HTTPAdapter(pool_maxsize=32, max_retries=retry))

    def request(
        self,
        method: str,
        path: str,
        *,
        acting_for: Principal | None = None,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        request_id = current_or_new_request_id()
        assertion = mint_assertion(
            issuer=self.caller,
            audience=self.audience,
            secret=self._secret,
            user_id=acting_for.id if acting_for else None,
            is_staff=acting_for.is_staff if acting_for else False,
            request_id=request_id,
        )
        all_headers = {
            "Accept": "application/json",
            ASSERTION_HEADER: assertion,
            REQUEST_ID_HEADER: request_id,
            **(headers or {}),
        }
        try:
            return self.session.request(
                method,
                f"{self.base_url}{path}",
                json=json,
                params=params,
                headers=all_headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            raise UpstreamTimeout(details={"service": self.audience}) from exc
        except requests.RequestException as exc:
            if _read_timed_out_after_retries(exc):
                raise UpstreamTimeout(details={"service": self.audience}) from exc
            raise UpstreamUnavailable(details={"service": self.audience}) from exc


def _read_timed_out_after_retries(exc: requests.RequestException) -> bool:
    """Once the retries of an idempotent call are spent, urllib3 reports its read timeout as MaxRetryError,
    which requests raises as a ConnectionError rather than a Timeout."""
    cause = exc.args[0] if exc.args else None
    return isinstance(cause, MaxRetryError) and isinstance(cause.reason, ReadTimeoutError)
