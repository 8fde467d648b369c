"""Users, API keys, ownership, quotas and the audit trail of a service shared by a team.

The users, the hashes of their keys, who owns which dataset, model and device table, and the audit
trail live in the job database (``UserStore``), so every API process reads the same state: a key
revoked or a user disabled stops working at the next request in every process.
"""

from nasprune.service.auth.errors import Forbidden, KeyNotFound, NameTaken, SingleTokenMode, UserExists, UserNotFound
from nasprune.service.auth.principal import LOCAL_ADMIN, Principal, Role
from nasprune.service.auth.store import ApiKey, AuditEntry, User, UserStore

__all__ = [
    "LOCAL_ADMIN",
    "ApiKey",
    "AuditEntry",
    "Forbidden",
    "KeyNotFound",
    "NameTaken",
    "Principal",
    "Role",
    "SingleTokenMode",
    "User",
    "UserExists",
    "UserNotFound",
    "UserStore",
]
