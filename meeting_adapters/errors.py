"""The errors every platform module raises: a stable ``code``, a message for the
teacher and, for the log only, what the platform itself said. Kept apart from
``base.py`` so that modules ``base`` relies on (``egress``) can raise them too."""

from __future__ import annotations

__all__ = ["AdapterError", "InvalidSettings"]


class AdapterError(Exception):
    """A platform problem with a stable ``code``, a human ``message`` and maybe a ``field``.

    ``field`` uses the path of the class API body, e.g. ``"platform.url"``.
    """

    def __init__(self, code: str, message: str, field: str | None = None, *,
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        # What the platform itself said: for the log only, never for the teacher (it is
        # text from a server a teacher may control).
        self.detail = detail

    def __str__(self) -> str:
        # For logs: with the platform's own words (``detail``), which ``message`` omits.
        text = f"{self.field}: {self.message}" if self.field else self.message
        return f"{text} [{self.detail}]" if self.detail else text


class InvalidSettings(AdapterError):
    """The class's platform settings are unusable (HTTP 400, code ``invalid_platform``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__("invalid_platform", message, field)
