"""Errors of users, keys and ownership; the API maps them to HTTP answers."""

from __future__ import annotations

from nasprune.errors import NasPruneError


class AuthError(NasPruneError):
    """Base class of the errors of users and keys."""


class Forbidden(AuthError):
    """The caller's role does not allow the action (a viewer writing, a member at an admin route)."""


class UserNotFound(AuthError):
    def __init__(self, name: str):
        super().__init__(f"no user named '{name}' (list them with GET /v1/users or 'nasprune users list')")


class UserExists(AuthError):
    def __init__(self, name: str):
        super().__init__(f"a user named '{name}' exists already")


class KeyNotFound(AuthError):
    def __init__(self, key_id: str):
        super().__init__(f"no API key with id '{key_id}'")


class NameTaken(AuthError):
    """A name chosen by the uploader (a device) is taken."""


class SingleTokenMode(AuthError):
    def __init__(self) -> None:
        super().__init__(
            "this server runs in single-token mode (NASPRUNE_AUTH=token): it has one user and no accounts; "
            "start it with NASPRUNE_AUTH=users to manage users and keys"
        )
