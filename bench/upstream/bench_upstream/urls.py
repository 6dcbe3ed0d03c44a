"""Every path answers with a small JSON document; /.well-known/jwks.json with the bench's public key."""

import json
import os

from django.urls import path, re_path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

JWKS = json.loads(os.environ.get("BENCH_JWKS", '{"keys": []}'))


class JwksView(APIView):
    def get(self, request: Request) -> Response:
        return Response(JWKS)


class HealthView(APIView):
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


class ItemView(APIView):
    """What a cheap read endpoint of a real service returns: a short list of records."""

    def get(self, request: Request) -> Response:
        return Response(
            {
                "count": 2,
                "next": None,
                "previous": None,
                "results": [
                    {"id": 1, "status": "confirmed", "total": "42.00", "path": request.path},
                    {"id": 2, "status": "pending", "total": "7.50", "path": request.path},
                ],
            }
        )

    def post(self, request: Request) -> Response:
        return Response({"received": request.data}, status=201)


urlpatterns = [
    path(".well-known/jwks.json", JwksView.as_view()),
    path("health/", HealthView.as_view()),
    re_path(r"^", ItemView.as_view()),
]
