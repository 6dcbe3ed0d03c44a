from __future__ import annotations

from typing import Any

import pytest

from configcenter.schema import InvalidConfig, check_value, validate


def test_known_keys_with_good_values_pass() -> None:
    values = {
        "ratelimit.default": "600/minute",
        "ratelimit.login": "10 per 5 minutes",
        "breaker.failures": 5,
        "breaker.reset_timeout": 2.5,
        "upstream.read_timeout": 10,
        "upstream.connect_timeout": 0.5,
        "feature.v2_catalog": True,
        "payments.max_charge_amount": 2500,
    }
    assert validate(values) == values


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("breaker.failures", 0, "must be between 1 and 100"),
        ("breaker.failures", 101, "must be between 1 and 100"),
        ("breaker.failures", 2.5, "must be an integer"),
        ("breaker.failures", "5", "must be an integer"),
        ("breaker.failures", True, "must be an integer"),
        ("breaker.reset_timeout", 0.5, "must be between 1 and 600"),
        ("breaker.reset_timeout", "ten", "must be a number"),
        ("upstream.read_timeout", 121, "must be between 0.1 and 120"),
        ("ratelimit.default", "lots", "is not a rate"),
        ("ratelimit.default", 600, "must be a rate"),
        ("ratelimit.default", "0/minute", "must allow 1 to"),
        ("ratelimit.default", "5/minute;10/hour", "exactly one rate"),
        ("feature.beta", "yes", "must be true or false"),
        ("payments.max_charge_amount", 0, "must be between 0.01 and 9999999999.99"),
        ("payments.max_charge_amount", 10_000_000_000, "must be between 0.01 and 9999999999.99"),
        ("payments.max_charge_amount", "500", "must be a number"),
        ("payments.max_charge_amount", None, "must be a number"),
        # json.loads (the admin's form, the REST body) accepts these, and every comparison with NaN is false
        ("payments.max_charge_amount", float("nan"), "must be a finite number"),
        ("upstream.read_timeout", float("nan"), "must be a finite number"),
        ("breaker.reset_timeout", float("inf"), "must be a finite number"),
        ("feature.Bad-Name", True, "unknown key"),
        ("breaker.failurez", 5, "unknown key"),
    ],
)
def test_a_bad_value_is_refused_with_a_message_naming_the_problem(key: str, value: Any, message: str) -> None:
    assert message in (check_value(key, value) or "")
    with pytest.raises(InvalidConfig) as refused:
        validate({key: value, "breaker.failures": 3} if key != "breaker.failures" else {key: value})
    assert refused.value.code == "invalid_config"
    assert list(refused.value.details) == [key]  # only the bad key is named


def test_the_configuration_must_be_an_object() -> None:
    with pytest.raises(InvalidConfig):
        validate(["breaker.failures", 5])
