"""Gunicorn's logger for the API: its error log as configured, and no access log of its own."""

from __future__ import annotations

from gunicorn.glogging import Logger


class AppWritesAccessLog(Logger):
    """The app writes one JSON access line per request (wardrobe.web.middleware.RequestId).

    Gunicorn enables its own access log whenever a logging config is given, and would then format an Apache
    line for every request only for the `gunicorn.access` logger to discard it.
    """

    access_log_enabled = False  # gunicorn >= 24 reads this before it builds anything

    def access(self, resp, req, environ, request_time) -> None:
        return None
