import pytest

from proxy.paths import MAX_PATH_LENGTH, is_safe_path

UNSAFE_RAW_PATHS = [
    "/api/v1/users/../../admin/",
    "/api/v1/users/./7/",
    "/api/v1/users/..",
    "/api/v1/users/%2e%2e/%2e%2e/admin/",
    "/api/v1/users/%2E%2E/admin/",
    "/api/v1/users/%2E./admin/",
    "/api/v1/users/.%2e/admin/",
    "/api/v1/users/%2e/7/",
    "/api/v1/users/7%2Fadmin/",
    "/api/v1/users/7%2fadmin/",
    "/api/v1/users/7%5Cadmin/",
    "/api/v1/users/7\\..\\admin/",
    "/api/v1/users//7/",
    "//api/v1/users/",
    "/api/v1/users/7%00/",
    "/api/v1/users/7%0d%0aX-Injected:1/",
    "/api/v1/users/7%7F/",
    "/api/v1/users/7\x00/",
    "/api/v1/users/7\r\n/",
    "/api/v1/users/" + "a" * MAX_PATH_LENGTH,
    "http://evil.example/api/v1/users/",
    "*",
]


@pytest.mark.parametrize("raw", UNSAFE_RAW_PATHS)
def test_unsafe_raw_paths_are_refused(raw: str) -> None:
    assert not is_safe_path(raw, "/api/v1/users/")


@pytest.mark.parametrize("decoded", ["/api/v1/users/../admin/", "/api/v1/users/a/b//c", "/api/v1/users/%2e%2e/"])
def test_unsafe_decoded_paths_are_refused_even_when_the_raw_form_looks_harmless(decoded: str) -> None:
    # given a double-encoded path: the raw form has only %25, the once-decoded form has %2e
    assert not is_safe_path("/api/v1/users/%252e%252e/", decoded)


@pytest.mark.parametrize(
    "path",
    ["/api/v1/users/", "/api/v1/users/7/", "/api/v1/products/a.b/", "/api/v1/products/..x/", "/admin/", "/health"],
)
def test_ordinary_paths_are_accepted(path: str) -> None:
    assert is_safe_path(path, path)


def test_encoded_ordinary_characters_are_accepted() -> None:
    assert is_safe_path("/api/v1/products/caf%C3%A9/", "/api/v1/products/café/")
