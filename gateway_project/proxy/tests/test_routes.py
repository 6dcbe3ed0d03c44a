import pytest

from proxy.routes import ROUTES, match_route


@pytest.mark.parametrize(
    ("path", "service", "auth"),
    [
        ("/api/v1/auth/token/", "users", "optional"),
        ("/api/v1/users/", "users", "optional"),
        ("/api/v1/users/7/", "users", "optional"),
        ("/api/v1/products/3/", "orders", "optional"),
        ("/api/v1/orders/", "orders", "required"),
        ("/api/v1/payments/12/", "payments", "required"),
        ("/admin/orders/orders/order/", "orders", "none"),
        ("/static/payments/admin/css/base.css", "payments", "none"),
        ("/api/v2/products/", "orders", "optional"),
    ],
)
def test_each_public_path_belongs_to_its_service(path: str, service: str, auth: str) -> None:
    route = match_route(path)

    assert route is not None
    assert (route.service, route.auth) == (service, auth)


@pytest.mark.parametrize(
    "path",
    ["/api/v1/", "/api/v2/users/", "/api/v1/usersx", "/admin/", "/static/gateway/x.css", "/api/docs/users/"],
)
def test_paths_outside_the_table_match_no_route(path: str) -> None:
    assert match_route(path) is None


def test_longer_prefixes_are_tried_first() -> None:
    lengths = [len(route.prefix) for route in ROUTES]

    assert lengths == sorted(lengths, reverse=True)


def test_clients_can_only_read_payments_and_products() -> None:
    assert match_route("/api/v1/payments/").methods == {"GET", "HEAD"}  # type: ignore[union-attr]
    assert match_route("/api/v1/products/").methods == {"GET", "HEAD"}  # type: ignore[union-attr]
    assert match_route("/api/v1/auth/login/").methods == {"POST"}  # type: ignore[union-attr]
