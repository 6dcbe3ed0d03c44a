"""The keys the config center knows, with their types and ranges. A version is checked against this
before it is saved (admin form, REST API, management command) and again when a gateway worker loads it,
so a value that cannot be used never reaches a running process.

Key names: fixed keys (``breaker.failures``), or a family and a name (``ratelimit.<policy>``,
``feature.<name>``). Values are JSON: rates are strings in the `limits` notation ("600/minute"),
numbers are numbers (``true`` is not 1), flags are ``true``/``false``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import limits

from common.errors import ApplicationError

NAME = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
SCOPE = re.compile(r"^[a-z][a-z0-9_-]{0,49}$")  # a service or profile name
MAX_RATE_AMOUNT = 1_000_000
MAX_RATE_WINDOW = 86_400  # seconds


@dataclass(frozen=True)
class Key:
    kind: str  # "int" | "float" | "bool" | "rate"
    minimum: float | None = None
    maximum: float | None = None
    help: str = ""


KEYS: dict[str, Key] = {
    "breaker.failures": Key("int", 1, 100, "consecutive failures that open a service's circuit breaker"),
    "breaker.reset_timeout": Key("float", 1, 600, "seconds an open breaker refuses calls"),
    "upstream.connect_timeout": Key("float", 0.1, 30, "seconds to connect to a service"),
    "upstream.read_timeout": Key("float", 0.1, 120, "seconds to wait for a service's answer"),
    # The payment service's per-charge limit (a larger charge is declined amount_too_large). Its upper bound
    # is the largest amount a payment can hold (12 digits, 2 of them decimals).
    "payments.max_charge_amount": Key("float", 0.01, 9_999_999_999.99, "largest single charge accepted"),
}
FAMILIES: dict[str, Key] = {
    "ratelimit": Key("rate", help='a rate-limit policy, e.g. "600/minute"'),
    "feature": Key("bool", help="a feature flag"),
}


class InvalidConfig(ApplicationError):
    status_code = 400
    code = "invalid_config"
    message = "The configuration was refused; details name each bad key."


def key_for(name: str) -> Key | None:
    if name in KEYS:
        return KEYS[name]
    family, _, rest = name.partition(".")
    if family in FAMILIES and NAME.match(rest):
        return FAMILIES[family]
    return None


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for ``name``, or None when it is."""
    key = key_for(name)
    if key is None:
        families = ", ".join(f"{family}.<name>" for family in FAMILIES)
        return f"unknown key; known keys: {', '.join(KEYS)}, {families}"
    if key.kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if key.kind == "rate":
        return _check_rate(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a{'n integer' if key.kind == 'int' else ' number'}"
    if key.kind == "int" and not isinstance(value, int):
        return "must be an integer"
    if not math.isfinite(value):  # JSON parsers accept NaN and Infinity; every comparison with NaN is false
        return "must be a finite number"
    if (key.minimum is not None and value < key.minimum) or (key.maximum is not None and value > key.maximum):
        return f"must be between {key.minimum:.15g} and {key.maximum:.15g}"  # .15g: 9999999999.99, not 1e+10
    return None


def _check_rate(value: Any) -> str | None:
    if not isinstance(value, str):
        return 'must be a rate such as "600/minute"'
    try:
        items = limits.parse_many(value)
    except ValueError:
        return f'{value!r} is not a rate such as "600/minute" or "10 per 5 minutes"'
    if len(items) != 1:
        return "must be exactly one rate"
    item = items[0]
    if not 1 <= item.amount <= MAX_RATE_AMOUNT or item.get_expiry() > MAX_RATE_WINDOW:
        return f"must allow 1 to {MAX_RATE_AMOUNT} requests per window of at most a day"
    return None


def validate(values: Any) -> dict[str, Any]:
    """``values`` if every key is known and every value fits its key; else :class:`InvalidConfig` with one
    message per bad key in ``details``."""
    if not isinstance(values, dict):
        raise InvalidConfig("The configuration must be a JSON object of key: value.")
    errors = {name: problem for name, value in values.items() if (problem := check_value(str(name), value))}
    if errors:
        raise InvalidConfig(details=errors)
    return dict(values)


def check_scope(service: str, profile: str) -> None:
    for what, value in (("service", service), ("profile", profile)):
        if not SCOPE.match(value):
            raise InvalidConfig(
                f"Invalid {what} name.", details={what: "lower-case letters, digits, '_' and '-', at most 50"}
            )
