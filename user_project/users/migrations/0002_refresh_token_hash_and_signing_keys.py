from django.db import migrations, models


def forget_jwt_refresh_tokens(apps, schema_editor):  # type: ignore[no-untyped-def]
    # Refresh tokens issued before this migration were JWTs known by their jti; they cannot be matched to
    # a hash, so their holders sign in again.
    apps.get_model("users", "RefreshToken").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("users", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(forget_jwt_refresh_tokens, migrations.RunPython.noop),
        migrations.RemoveField(model_name="refreshtoken", name="jti"),
        migrations.AddField(
            model_name="refreshtoken",
            name="token_hash",
            field=models.CharField(
                default="", editable=False, max_length=64, unique=True, verbose_name="SHA-256 of the token"
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="refreshtoken",
            name="rotated_at",
            field=models.DateTimeField(blank=True, help_text="When it was exchanged for its successor.", null=True),
        ),
        migrations.AddField(
            model_name="refreshtoken",
            name="revoked_reason",
            field=models.CharField(
                blank=True,
                choices=[
                    ("logout", "signed out"),
                    ("reuse", "a spent token of its family was reused"),
                    ("admin", "revoked by an administrator"),
                ],
                max_length=16,
            ),
        ),
        migrations.CreateModel(
            name="SigningKey",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("kid", models.CharField(editable=False, max_length=64, unique=True, verbose_name="key id")),
                (
                    "public_key",
                    models.CharField(
                        editable=False, help_text="The raw Ed25519 public key, base64url.", max_length=64
                    ),
                ),
                (
                    "private_key",
                    models.TextField(blank=True, editable=False, help_text="PKCS#8 PEM while it may sign, else blank."),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("activated_at", models.DateTimeField(help_text="From when it signs (until a newer key is activated).")),
                (
                    "retired_at",
                    models.DateTimeField(blank=True, help_text="From when it is no longer published.", null=True),
                ),
            ],
            options={
                "ordering": ("-activated_at", "-id"),
            },
        ),
    ]
