from __future__ import annotations

import pytest
from django.test import Client

from proxy.tests.upstream_stub import StubUpstream

pytestmark = pytest.mark.django_db


def test_the_gateway_admin_login_page_renders(client: Client, stubs: dict[str, StubUpstream]) -> None:
    response = client.get("/admin/login/")

    assert response.status_code == 200
    assert b"csrfmiddlewaretoken" in response.content
    assert response.cookies["gateway_csrftoken"]["path"] == "/admin/"
    assert all(not stub.received for stub in stubs.values())


def test_a_superuser_sees_the_gateway_admin_index(admin_client: Client) -> None:
    response = admin_client.get("/admin/")

    assert response.status_code == 200
    assert b"/admin/auth/user/" in response.content


def test_the_user_changelist_renders(admin_client: Client) -> None:
    assert admin_client.get("/admin/auth/user/").status_code == 200


def test_the_gateway_static_files_are_served_by_the_gateway(client: Client, stubs: dict[str, StubUpstream]) -> None:
    response = client.get("/static/gateway/admin/css/base.css")

    assert response.status_code == 200
    assert all(not stub.received for stub in stubs.values())
