import pytest
from django.test import Client
from django.urls import reverse

from common.events import Event
from notifications.handlers import on_user_created
from notifications.models import SentEmail

pytestmark = pytest.mark.django_db


def test_sent_email_changelist_renders_with_search_and_filter(admin_client: Client, user_created: Event) -> None:
    on_user_created(user_created)

    response = admin_client.get(
        reverse("admin:notifications_sentemail_changelist"), {"q": "ann@example.com", "kind__exact": "welcome"}
    )

    assert response.status_code == 200
    assert b"Welcome to Shop" in response.content


def test_sent_email_change_page_is_read_only(admin_client: Client, user_created: Event) -> None:
    on_user_created(user_created)
    sent = SentEmail.objects.get()

    change = admin_client.get(reverse("admin:notifications_sentemail_change", args=[sent.pk]))
    add = admin_client.get(reverse("admin:notifications_sentemail_add"))

    assert change.status_code == 200
    assert b'name="_save"' not in change.content
    assert add.status_code == 403
