"""Who a request acts for: a user with a role and perhaps a team, or the single-token server's one user."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"  # everything, every user's resources, users and keys, the audit trail
    MEMBER = "member"  # their own resources and their team's; submits, uploads, cancels
    VIEWER = "viewer"  # reads what a member of their team reads; changes nothing


@dataclass(frozen=True)
class Principal:
    """``name`` None is the one user of a single-token (or open) server: an admin, owning what it creates."""

    name: str | None
    role: Role
    team: str | None = None
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def can_write(self) -> bool:
        return self.role is not Role.VIEWER

    def sees(self, owner: str | None, team: str | None) -> bool:
        """Whether a resource created by ``owner`` (shared with ``team``) is visible to this principal."""
        if self.is_admin:
            return True
        return (owner is not None and owner == self.name) or (team is not None and team == self.team)


LOCAL_ADMIN = Principal(name=None, role=Role.ADMIN)
