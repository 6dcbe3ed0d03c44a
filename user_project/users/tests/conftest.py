from typing import Any

import pytest
from rest_framework.test import APIClient

from users.models import User
from users.tests.factories import UserFactory


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def user(db: Any) -> User:
    return UserFactory(email="ann@example.com", name="Ann Example")
