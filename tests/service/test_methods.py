"""`deployments.methods`: the path's methods, read from the app's routes (no Ray needed)."""

from __future__ import annotations

from fastapi import FastAPI

from deployments.methods import allowed_methods


def _scope(app: FastAPI, method: str, path: str) -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": "", "app": app}


def test_allowed_methods_follow_routes_added_later() -> None:
    """The routes are read once per app, and again when the app's route list grows."""
    app = FastAPI()

    @app.get("/a")
    def get_a() -> dict:
        return {}

    assert allowed_methods(app, _scope(app, "GET", "/a")) == ["GET", "HEAD", "OPTIONS"]
    assert allowed_methods(app, _scope(app, "GET", "/b")) == []

    @app.post("/a")
    def post_a() -> dict:
        return {}

    @app.put("/b")
    def put_b() -> dict:
        return {}

    assert allowed_methods(app, _scope(app, "GET", "/a")) == ["GET", "HEAD", "POST", "OPTIONS"]
    assert allowed_methods(app, _scope(app, "PUT", "/b")) == ["PUT", "OPTIONS"]


def test_allowed_methods_of_separate_apps_are_their_own() -> None:
    one, two = FastAPI(), FastAPI()

    @one.get("/x")
    def x() -> dict:
        return {}

    @two.delete("/x")
    def y() -> dict:
        return {}

    assert allowed_methods(one, _scope(one, "GET", "/x")) == ["GET", "HEAD", "OPTIONS"]
    assert allowed_methods(two, _scope(two, "GET", "/x")) == ["DELETE", "OPTIONS"]
