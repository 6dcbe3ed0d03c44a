from django.contrib import admin


def name_admin_site(label: str) -> None:
    """The four admins look alike, so each names its service. No "view site" link: the site is an API."""
    admin.site.site_header = f"Shop · {label}"
    admin.site.site_title = f"Shop {label} admin"
    admin.site.index_title = f"{label[:1].upper()}{label[1:]} administration"
    admin.site.site_url = None
