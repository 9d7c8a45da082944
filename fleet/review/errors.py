"""The review service's refusals; the web layer turns them into 403 / 404 / 409 / 422 answers."""

from __future__ import annotations


class NotFound(LookupError):
    pass


class Forbidden(PermissionError):
    """Authenticated, but not allowed to do this (a device token filing another device's item)."""


class Conflict(RuntimeError):
    """The request is well-formed but the item's state does not allow it (claimed by another, nothing to undo)."""


class FieldError(ValueError):
    """Bad input in one field of a request: becomes a 422 naming the field; nothing is changed."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message
