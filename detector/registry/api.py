"""The registry's HTTP route, attached by ``serve``: ``POST /api/v1/models/reload``."""

from __future__ import annotations

from typing import Any

from detector.registry.serving import ChampionWatcher

OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/models/reload": {"post": {
        "summary": "Check the registry now and serve each query's champion if the alias moved.",
        "responses": {"200": {"description": "The versions installed ({query, version}) and any errors."},
                      "503": {"description": "The model registry is unreachable; the served models are kept."}}}},
}
"""The routes of :func:`blueprint`, for the app's OpenAPI document."""


def blueprint(watcher: ChampionWatcher):
    """``POST /api/v1/models/reload``: check the registry now."""
    from flask import Blueprint, jsonify

    routes = Blueprint("registry", __name__)

    @routes.post("/api/v1/models/reload")
    def reload_models():
        result = watcher.sync()
        status = 200 if "error" not in result else 503
        return jsonify({"status": "success" if status == 200 else "error", **result}), status

    return routes
