"""Users, API keys (hashes only), ownership of uploads with storage quotas, and the audit trail.

Keys look like ``nsp_<id>_<secret>``: the id (12 hex digits) is public (listed, used to revoke), the
secret is 43 random URL-safe characters (256 bits). Only SHA-256 of the whole key is stored: a slow
password hash protects guessable passwords, and a 256-bit random secret cannot be guessed, so one
fast hash is enough and keeps each request's check cheap. Every request reads the key and its user
from the database (no cache), so revoking a key or disabling a user takes effect at once in every
process that shares it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from nasprune.service.auth.errors import KeyNotFound, NameTaken, UserExists, UserNotFound
from nasprune.service.auth.principal import Principal, Role
from nasprune.service.jobs.errors import InvalidRequest, StorageQuotaExceeded
from nasprune.service.jobs.store import UTCDateTime, metadata, serialized, utcnow

USER_NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
TEAM_PATTERN = USER_NAME_PATTERN
KEY_PREFIX = "nsp_"
KEY_PATTERN = re.compile(r"^nsp_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
KEY_USE_AUDIT_S = 600.0  # a key's use is written to the audit trail at most this often per process

users = sa.Table(
    "nasprune_users",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("team", sa.String(64)),
    sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("max_running", sa.Integer()),
    sa.Column("max_queued", sa.Integer()),
    sa.Column("max_storage_bytes", sa.BigInteger()),
    sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

api_keys = sa.Table(
    "nasprune_api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("user_name", sa.String(64), sa.ForeignKey("nasprune_users.name"), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("label", sa.String(128)),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime()),
    sa.Column("last_used_at", UTCDateTime()),
)

resources = sa.Table(
    "nasprune_resources",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("user_name", sa.String(64), primary_key=True),
    sa.Column("team", sa.String(64)),
    sa.Column("n_bytes", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

audit = sa.Table(
    "nasprune_audit",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("user_name", sa.String(64)),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("target", sa.String(160)),
    sa.Column("detail", sa.Text()),
)

STORED_KINDS = ("dataset", "model")  # what counts toward a user's storage quota (device tables are small)


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    team: str | None
    disabled: bool
    max_running: int | None
    max_queued: int | None
    max_storage_bytes: int | None
    priority: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: sa.Row) -> User:
        m = row._mapping
        return cls(
            name=m["name"],
            role=Role(m["role"]),
            team=m["team"],
            disabled=bool(m["disabled"]),
            max_running=m["max_running"],
            max_queued=m["max_queued"],
            max_storage_bytes=m["max_storage_bytes"],
            priority=int(m["priority"] or 0),
            created_at=m["created_at"],
        )


@dataclass(frozen=True)
class ApiKey:
    id: str
    user: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def from_row(cls, row: sa.Row) -> ApiKey:
        m = row._mapping
        return cls(m["id"], m["user_name"], m["label"], m["created_at"], m["revoked_at"], m["last_used_at"])


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    user: str | None
    action: str
    target: str | None
    detail: str | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class UserStore:
    """The users, keys, resource owners and audit trail in the job database (same engine as ``JobStore``)."""

    def __init__(self, engine: Engine, *, default_storage_bytes: int | None = None):
        self.engine = engine
        self.default_storage_bytes = default_storage_bytes
        self._key_use: dict[str, float] = {}
        self._lock = threading.Lock()

    # users ----------------------------------------------------------------------------------------

    def add_user(self, name: str, role: Role | str, team: str | None = None, **limits: Any) -> User:
        if not re.fullmatch(USER_NAME_PATTERN, name):
            raise InvalidRequest("name", f"'{name}' is not a user name: a lowercase letter, then a-z 0-9 _ . -")
        _check_team(team)
        row = {
            "name": name,
            "role": Role(role).value,
            "team": team,
            "disabled": False,
            "priority": 0,
            "created_at": utcnow(),
            **_limits(limits),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(users.insert().values(**row))
        except sa.exc.IntegrityError:
            raise UserExists(name) from None
        return self.get_user(name)

    def get_user(self, name: str) -> User:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.name == name)).first()
        if row is None:
            raise UserNotFound(name)
        return User.from_row(row)

    def list_users(self) -> list[User]:
        with self.engine.connect() as conn:
            return [User.from_row(r) for r in conn.execute(sa.select(users).order_by(users.c.name))]

    def has_users(self) -> bool:
        with self.engine.connect() as conn:
            return conn.scalar(sa.select(sa.func.count()).select_from(users)) > 0

    def update_user(self, name: str, **changes: Any) -> User:
        """Change a user's ``role``, ``team``, ``disabled``, limits or ``priority`` (keys given only)."""
        values: dict[str, Any] = {}
        if "role" in changes and changes["role"] is not None:
            values["role"] = Role(changes.pop("role")).value
        if "team" in changes:
            _check_team(changes["team"])
            values["team"] = changes.pop("team")
        if changes.get("disabled") is not None:
            values["disabled"] = bool(changes.pop("disabled"))
        if changes.get("priority") is not None:
            values["priority"] = int(changes.pop("priority"))
        values.update(_limits({k: v for k, v in changes.items() if k.startswith("max_")}))
        with self.engine.begin() as conn:
            if values:
                n = conn.execute(users.update().where(users.c.name == name).values(**values)).rowcount
            else:
                n = conn.scalar(sa.select(sa.func.count()).select_from(users).where(users.c.name == name))
        if not n:
            raise UserNotFound(name)
        return self.get_user(name)

    # keys -----------------------------------------------------------------------------------------

    def create_key(self, user: str, label: str | None = None) -> tuple[ApiKey, str]:
        """A new key of ``user``: ``(its record, the key)``. The key itself is never stored or shown again."""
        self.get_user(user)
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key_id, user_name=user, secret_sha256=hash_key(key), label=label, created_at=now
                )
            )
        return ApiKey(key_id, user, label, now, None, None), key

    def list_keys(self, user: str | None = None) -> list[ApiKey]:
        q = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if user is not None:
            self.get_user(user)
            q = q.where(api_keys.c.user_name == user)
        with self.engine.connect() as conn:
            return [ApiKey.from_row(r) for r in conn.execute(q)]

    def get_key(self, key_id: str) -> ApiKey:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise KeyNotFound(key_id)
        return ApiKey.from_row(row)

    def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key (``KeyNotFound`` when there is none); revoking it again keeps the first time."""
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return self.get_key(key_id)

    def authenticate(self, key: str) -> tuple[Principal | None, str | None]:
        """``(principal, None)`` for a valid key of an enabled user, else ``(None, why)``. Reads the database
        every time: a revoked key or a disabled user is refused at the next request, in every process."""
        m = KEY_PATTERN.fullmatch(key.strip())
        if m is None:
            return None, "the API key is not valid"
        key_id = m.group(1)
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    api_keys.c.secret_sha256,
                    api_keys.c.revoked_at,
                    users.c.name,
                    users.c.role,
                    users.c.team,
                    users.c.disabled,
                )
                .join(users, users.c.name == api_keys.c.user_name)
                .where(api_keys.c.id == key_id)
            ).first()
        if row is None or not secrets.compare_digest(row.secret_sha256, hash_key(key.strip())):
            return None, "the API key is not valid"
        if row.revoked_at is not None:
            return None, "this API key has been revoked"
        if row.disabled:
            return None, f"user '{row.name}' is disabled"
        self._note_use(key_id, row.name)
        return Principal(row.name, Role(row.role), row.team, key_id), None

    def _note_use(self, key_id: str, user: str) -> None:
        """A key's use: its ``last_used_at`` and an audit line, at most every ``KEY_USE_AUDIT_S`` per process."""
        now = time.monotonic()
        with self._lock:
            last = self._key_use.get(key_id)
            if last is not None and now - last < KEY_USE_AUDIT_S:
                return
            self._key_use[key_id] = now
        with self.engine.begin() as conn:
            conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(last_used_at=utcnow()))
        self.record(user, "key.use", f"key:{key_id}")

    # ownership and storage ------------------------------------------------------------------------

    def owners(self, kind: str, name: str) -> list[tuple[str, str | None]]:
        """``(user, team)`` of every owner of a resource; empty for one nobody owns (added on the server)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(resources.c.user_name, resources.c.team).where(
                    resources.c.kind == kind, resources.c.name == name
                )
            ).all()
        return [(r.user_name, r.team) for r in rows]

    def visible(self, kind: str, name: str, who: Principal) -> bool:
        """Readable by ``who``: owned by nobody (built-in or added on the server), or by someone ``who`` sees."""
        owners = self.owners(kind, name)
        return not owners or any(who.sees(user, team) for user, team in owners)

    def hidden_names(self, kind: str, who: Principal) -> set[str]:
        """Names of resources of ``kind`` that ``who`` may not see (owned, and by no one ``who`` sees)."""
        if who.is_admin:
            return set()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(resources.c.name, resources.c.user_name, resources.c.team).where(resources.c.kind == kind)
            ).all()
        seen: dict[str, bool] = {}
        for r in rows:
            seen[r.name] = seen.get(r.name, False) or who.sees(r.user_name, r.team)
        return {name for name, ok in seen.items() if not ok}

    def storage_used(self, user: str, conn: Connection | None = None) -> int:
        q = sa.select(sa.func.coalesce(sa.func.sum(resources.c.n_bytes), 0)).where(
            resources.c.user_name == user, resources.c.kind.in_(STORED_KINDS)
        )
        if conn is not None:
            return int(conn.scalar(q))
        with self.engine.connect() as c:
            return int(c.scalar(q))

    def storage_limit(self, user: str) -> int | None:
        limit = self.get_user(user).max_storage_bytes
        return self.default_storage_bytes if limit is None else limit

    def storage_room(self, who: Principal) -> int | None:
        """Bytes ``who`` may still store (None: no limit)."""
        if who.name is None:
            return None
        limit = self.storage_limit(who.name)
        return None if limit is None else max(0, limit - self.storage_used(who.name))

    def claim(self, kind: str, name: str, who: Principal, n_bytes: int = 0) -> None:
        """Record ``who`` as an owner of a resource of ``n_bytes``: checked against their storage quota and
        written in one serialised transaction, so two uploads of one user cannot both pass the limit."""
        if who.name is None:
            return
        limit = self.storage_limit(who.name) if kind in STORED_KINDS else None
        with serialized(self.engine, f"storage:{who.name}") as conn:
            if limit is not None:
                used = self.storage_used(who.name, conn)
                mine = conn.scalar(
                    sa.select(resources.c.n_bytes).where(
                        resources.c.kind == kind, resources.c.name == name, resources.c.user_name == who.name
                    )
                )
                if used - int(mine or 0) + n_bytes > limit:
                    raise storage_exceeded(limit, used, n_bytes)
            conn.execute(
                resources.delete().where(
                    resources.c.kind == kind, resources.c.name == name, resources.c.user_name == who.name
                )
            )
            conn.execute(
                resources.insert().values(
                    kind=kind, name=name, user_name=who.name, team=who.team, n_bytes=n_bytes, created_at=utcnow()
                )
            )

    def claim_name(self, kind: str, name: str, who: Principal, *, exists: bool) -> bool:
        """Let ``who`` write the resource ``name`` that others may not take over (a device's tables): one
        serialised transaction per name, so two users racing for a new name cannot both get it.

        Allowed: a new name (``who`` becomes its owner), one ``who`` owns, or anything for an admin (who
        does not become an owner of another's). Otherwise ``NameTaken``. Returns whether ``who`` was
        recorded as a new owner (so a failed write can ``release`` it)."""
        with serialized(self.engine, f"name:{kind}:{name}") as conn:
            owners = (
                conn.execute(sa.select(resources.c.user_name).where(resources.c.kind == kind, resources.c.name == name))
                .scalars()
                .all()
            )
            if who.name is not None and who.name in owners:
                return False
            if not who.is_admin and (owners or exists):
                raise NameTaken(f"{kind} name '{name}' is taken: choose another name")
            if owners or who.name is None:
                return False
            conn.execute(
                resources.insert().values(
                    kind=kind, name=name, user_name=who.name, team=who.team, n_bytes=0, created_at=utcnow()
                )
            )
            return True

    def release(self, kind: str, name: str, user: str | None) -> None:
        if user is None:
            return
        with self.engine.begin() as conn:
            conn.execute(
                resources.delete().where(
                    resources.c.kind == kind, resources.c.name == name, resources.c.user_name == user
                )
            )

    # audit ----------------------------------------------------------------------------------------

    def record(self, user: str | None, action: str, target: str | None = None, detail: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                audit.insert().values(at=utcnow(), user_name=user, action=action, target=target, detail=detail)
            )

    def read_audit(
        self, *, user: str | None = None, action: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[int, list[AuditEntry]]:
        cond = [sa.true()]
        if user is not None:
            cond.append(audit.c.user_name == user)
        if action is not None:
            cond.append(audit.c.action == action)
        with self.engine.connect() as conn:
            total = conn.scalar(sa.select(sa.func.count()).select_from(audit).where(*cond))
            rows = conn.execute(
                sa.select(audit).where(*cond).order_by(audit.c.id.desc()).limit(limit).offset(offset)
            ).all()
        return int(total or 0), [AuditEntry(r.id, r.at, r.user_name, r.action, r.target, r.detail) for r in rows]


def storage_exceeded(limit: int, used: int, n_bytes: int) -> StorageQuotaExceeded:
    return StorageQuotaExceeded(
        "stored bytes (datasets and models)",
        limit,
        used,
        f"this upload needs {n_bytes} more; nothing of it was kept (remove data, or ask an admin for a larger quota)",
    )


def _check_team(team: str | None) -> None:
    if team is not None and not re.fullmatch(TEAM_PATTERN, team):
        raise InvalidRequest("team", f"'{team}' is not a team name: a lowercase letter, then a-z 0-9 _ . -")


def _limits(limits: dict[str, Any]) -> dict[str, Any]:
    allowed = {"max_running", "max_queued", "max_storage_bytes", "priority"}
    unknown = set(limits) - allowed
    if unknown:
        raise InvalidRequest(", ".join(sorted(unknown)), f"unknown limit; the limits are {', '.join(sorted(allowed))}")
    out = {}
    for k, v in limits.items():
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or (k != "priority" and v < 0)):
            raise InvalidRequest(k, f"must be a whole number of at least 0, not {v!r}")
        out[k] = v
    return out


class UploadClaim:
    """One upload of ``who``: what they may still store, checked as the bytes arrive, and recording them as
    the owner of what is stored (``admit``, atomically against their quota) before it is put in place."""

    def __init__(self, users: UserStore, who: Principal):
        self.users = users
        self.who = who
        self.limit = users.storage_limit(who.name) if who.name is not None else None
        self.used = users.storage_used(who.name) if who.name is not None else 0

    def check_read(self, n_bytes: int) -> None:
        if self.limit is not None and self.used + n_bytes > self.limit:
            raise storage_exceeded(self.limit, self.used, n_bytes)

    def admit(self, kind: str, name: str, n_bytes: int) -> None:
        self.users.claim(kind, name, self.who, n_bytes)

    def release(self, kind: str, name: str) -> None:
        self.users.release(kind, name, self.who.name)
