"""Input and output shapes of the user API. Validation of form only; rules live in the services."""

from rest_framework import serializers

from users.models import User

PASSWORD_MAX_LENGTH = 256  # long enough for any password manager, short enough to keep hashing cheap


class UserCreateInputSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    name = serializers.CharField(max_length=150)
    password = serializers.CharField(write_only=True, trim_whitespace=False, max_length=PASSWORD_MAX_LENGTH)


class UserOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ("id", "email", "name", "is_staff", "date_joined")
        read_only_fields = fields


class TokenObtainInputSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(write_only=True, trim_whitespace=False, max_length=PASSWORD_MAX_LENGTH)


class TokenRefreshInputSerializer(serializers.Serializer):
    refresh = serializers.CharField(write_only=True, max_length=256)


class AccessTokenOutputSerializer(serializers.Serializer):
    access = serializers.CharField()
    token_type = serializers.CharField()
    expires_in = serializers.IntegerField(help_text="Seconds until the access token expires.")


class TokenPairOutputSerializer(AccessTokenOutputSerializer):
    refresh = serializers.CharField(help_text="Opaque; works once, at /api/v1/auth/refresh.")


class JwkSerializer(serializers.Serializer):
    kty = serializers.CharField()
    crv = serializers.CharField()
    x = serializers.CharField()
    kid = serializers.CharField()
    use = serializers.CharField()
    alg = serializers.CharField()


class JwksSerializer(serializers.Serializer):
    keys = JwkSerializer(many=True)
