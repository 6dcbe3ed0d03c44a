from django.contrib import admin

from common.messaging_admin import InboxEventAdmin, OutboxEventAdmin
from messaging.models import InboxEvent, OutboxEvent

admin.site.register(OutboxEvent, OutboxEventAdmin)
admin.site.register(InboxEvent, InboxEventAdmin)
