"""``nasprune users ...`` and ``nasprune keys ...``: accounts of a service shared by a team (NASPRUNE_AUTH=users).

Without ``--url`` they work on the job database directly (``--data-dir`` / ``--database-url``, the
server's ``NASPRUNE_*``): that is how the first admin is made, on the machine that runs the service.
With ``--url`` they go through the API with an admin's key (``--token`` / ``NASPRUNE_API_KEY``).
A key is printed once, on stdout, and never stored: only its hash is kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nasprune.cli._common import human, table

ROLES = ("admin", "member", "viewer")
LIMITS = ("max_running", "max_queued", "max_storage_bytes", "priority")


def register(sub) -> None:
    u = sub.add_parser(
        "users",
        help="users of a shared service: add, list, disable, set limits; the audit trail",
        description=(
            "Users of a service shared by a team (NASPRUNE_AUTH=users): each has a role (admin, member, viewer), "
            "maybe a team, limits, and API keys. Without --url these work on the job database (--data-dir, "
            "--database-url); with --url through the API with an admin's key."
        ),
    )
    us = u.add_subparsers(dest="users_command", metavar="COMMAND", required=True)
    add = us.add_parser(
        "add",
        help="add a user and print their first API key (shown once)",
        description="add a user and print their first API key (shown once)",
    )
    add.add_argument("name", help="lowercase letter, then a-z 0-9 _ . -")
    add.add_argument("--role", choices=ROLES, default="member", help="default member")
    add.add_argument("--team", help="members of a team see and act on each other's jobs and uploads")
    add.add_argument("--no-key", action="store_true", help="do not issue a key now ('nasprune keys create' later)")
    _limit_options(add)
    _where(add)
    add.set_defaults(func=_add)
    ls = us.add_parser(
        "list", help="users, roles, teams, limits and use", description="users, roles, teams, limits and use"
    )
    ls.add_argument("--json", action="store_true")
    _where(ls)
    ls.set_defaults(func=_list)
    for name, disabled in (("disable", True), ("enable", False)):
        text = f"{name} a user ({'their keys stop working at once, in every API process' if disabled else 'again'})"
        d = us.add_parser(name, help=text, description=text)
        d.add_argument("name")
        _where(d)
        d.set_defaults(func=_set, disabled=disabled, role=None, team=None, **dict.fromkeys(LIMITS))
    st = us.add_parser(
        "set",
        help="change a user's role, team, limits or priority",
        description="change a user's role, team, limits or priority",
    )
    st.add_argument("name")
    st.add_argument("--role", choices=ROLES)
    st.add_argument("--team")
    _limit_options(st)
    _where(st)
    st.set_defaults(func=_set, disabled=None)
    au = us.add_parser("audit", help="who did what, newest first", description="who did what, newest first")
    au.add_argument("--user", help="only this user's actions")
    au.add_argument("--action", help="e.g. job.submit, job.cancel, job.download, dataset.upload, key.use")
    au.add_argument("--limit", type=int, default=50)
    au.add_argument("--json", action="store_true")
    _where(au)
    au.set_defaults(func=_audit)

    k = sub.add_parser(
        "keys",
        help="API keys of users: create (shown once), list, revoke",
        description=(
            "API keys of users (NASPRUNE_AUTH=users): a key is printed once when created and stored only as a "
            "hash; revoking it stops it at once in every API process."
        ),
    )
    ks = k.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    c = ks.add_parser(
        "create",
        help="issue a new key for a user and print it (shown once)",
        description="issue a new key for a user and print it (shown once)",
    )
    c.add_argument("user")
    c.add_argument("--label", help="what the key is for")
    _where(c)
    c.set_defaults(func=_create_key)
    kl = ks.add_parser(
        "list",
        help="a user's keys (ids, labels, when used; never the keys)",
        description="a user's keys (ids, labels, when used; never the keys)",
    )
    kl.add_argument("user")
    kl.add_argument("--json", action="store_true")
    _where(kl)
    kl.set_defaults(func=_list_keys)
    r = ks.add_parser(
        "revoke",
        help="revoke a key by its id: it stops working at once, in every API process",
        description="revoke a key by its id: it stops working at once, in every API process",
    )
    r.add_argument("key_id", help="the 12 hex digits after 'nsp_' (see 'nasprune keys list USER')")
    _where(r)
    r.set_defaults(func=_revoke)


def _limit_options(p) -> None:
    p.add_argument("--max-running", type=int, help="running jobs at a time (default: NASPRUNE_USER_MAX_RUNNING)")
    p.add_argument("--max-queued", type=int, help="queued jobs at a time (default: NASPRUNE_USER_MAX_QUEUED)")
    p.add_argument("--max-storage-bytes", type=int, help="bytes of uploads (default: NASPRUNE_USER_MAX_STORAGE_BYTES)")
    p.add_argument("--priority", type=int, help="among users with as many running jobs, higher goes first")


def _where(p) -> None:
    p.add_argument("--url", help="manage a running service through its API (needs an admin's key)")
    p.add_argument("--token", help="an admin's API key for --url (default $NASPRUNE_API_KEY)")
    p.add_argument("--data-dir", type=Path, help="without --url: the service's data dir (default ./.nasprune)")
    p.add_argument("--database-url", help="without --url: the service's job database (default SQLite in the data dir)")


class _Local:
    """The same operations as the API's admin routes, on the job database directly."""

    def __init__(self, args):
        from nasprune.service.auth import UserStore
        from nasprune.service.jobs.store import JobStore
        from nasprune.settings import Settings

        kw = {k: v for k, v in {"data_dir": args.data_dir, "database_url": args.database_url}.items() if v}
        self.settings = Settings(**kw)
        self.jobs = JobStore(self.settings.db_url)
        self.jobs.migrate()
        self.users = UserStore(self.jobs.engine, default_storage_bytes=self.settings.user_max_storage_bytes)

    def add_user(self, name, role, team, **limits) -> dict:
        user = self.users.add_user(name, role, team, **limits)
        self.users.record(None, "user.add", f"user:{name}", f"role={role} team={team} (nasprune users add)")
        return self._user(user)

    def users_(self) -> list[dict]:
        return [self._user(u) for u in self.users.list_users()]

    def update_user(self, name, **changes) -> dict:
        user = self.users.update_user(name, **changes)
        detail = ", ".join(f"{k}={v}" for k, v in sorted(changes.items()))
        self.users.record(None, "user.update", f"user:{name}", f"{detail} (nasprune users)")
        return self._user(user)

    def create_key(self, user, label) -> dict:
        record, key = self.users.create_key(user, label)
        self.users.record(None, "key.create", f"key:{record.id}", f"user={user} (nasprune keys create)")
        return {**_key(record), "key": key}

    def keys(self, user) -> list[dict]:
        return [_key(k) for k in self.users.list_keys(user)]

    def revoke_key(self, key_id) -> dict:
        record = self.users.revoke_key(key_id)
        self.users.record(None, "key.revoke", f"key:{key_id}", f"user={record.user} (nasprune keys revoke)")
        return _key(record)

    def audit(self, user, action, limit) -> dict:
        total, entries = self.users.read_audit(user=user, action=action, limit=limit)
        items = [
            {
                "id": e.id,
                "at": e.at.isoformat(),
                "user": e.user,
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
            }
            for e in entries
        ]
        return {"total": total, "items": items}

    def _user(self, u) -> dict:
        from nasprune.service.jobs.status import JobStatus

        return {
            "name": u.name,
            "role": u.role.value,
            "team": u.team,
            "disabled": u.disabled,
            "max_running": u.max_running,
            "max_queued": u.max_queued,
            "max_storage_bytes": u.max_storage_bytes,
            "priority": u.priority,
            "usage": {
                "running": self.jobs.count_of(u.name, JobStatus.RUNNING),
                "queued": self.jobs.count_of(u.name, JobStatus.QUEUED),
                "storage_bytes": self.users.storage_used(u.name),
            },
        }

    def close(self) -> None:
        self.jobs.close()


class _Remote:
    def __init__(self, args):
        from nasprune.client import Client

        self.c = Client(args.url, args.token)

    def add_user(self, name, role, team, **limits) -> dict:
        return self.c.add_user(name, role, team, **limits)

    def users_(self) -> list[dict]:
        return self.c.users()

    def update_user(self, name, **changes) -> dict:
        return self.c.update_user(name, **changes)

    def create_key(self, user, label) -> dict:
        return self.c.create_key(user, label)

    def keys(self, user) -> list[dict]:
        return self.c.keys(user)

    def revoke_key(self, key_id) -> dict:
        return self.c.revoke_key(key_id)

    def audit(self, user, action, limit) -> dict:
        return self.c.audit(user=user, action=action, limit=limit)

    def close(self) -> None:
        self.c.close()


def _backend(args):
    return _Remote(args) if args.url else _Local(args)


def _key(k) -> dict:
    return {
        "id": k.id,
        "user": k.user,
        "label": k.label,
        "created_at": k.created_at.isoformat(),
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
    }


def _limits(args) -> dict:
    return {k: getattr(args, k) for k in LIMITS if getattr(args, k, None) is not None}


def _print_key(issued: dict) -> None:
    print(issued["key"])
    print(
        f"API key {issued['id']} of user '{issued['user']}' above: it is shown this once and stored only as a hash; "
        "send it as 'Authorization: Bearer <key>' (CLI and client: --token or NASPRUNE_API_KEY)",
        file=sys.stderr,
    )


def _add(args) -> int:
    b = _backend(args)
    try:
        user = b.add_user(args.name, args.role, args.team, **_limits(args))
        print(
            f"added {user['role']} '{user['name']}'" + (f" (team {user['team']})" if user["team"] else ""),
            file=sys.stderr,
        )
        if not args.no_key:
            _print_key(b.create_key(args.name, "first key"))
    finally:
        b.close()
    return 0


def _list(args) -> int:
    b = _backend(args)
    try:
        users = b.users_()
    finally:
        b.close()
    if args.json:
        print(json.dumps(users, indent=2))
        return 0
    rows = []
    for u in users:
        use = u.get("usage") or {}
        limit = u["max_storage_bytes"]
        rows.append(
            [
                u["name"],
                u["role"],
                u["team"] or "",
                "disabled" if u["disabled"] else "",
                f"{use.get('running', 0)}/{u['max_running'] if u['max_running'] is not None else '-'}",
                f"{use.get('queued', 0)}/{u['max_queued'] if u['max_queued'] is not None else '-'}",
                f"{human(use.get('storage_bytes', 0))}B/{human(limit) + 'B' if limit is not None else '-'}",
                u["priority"],
            ]
        )
    print(table(rows, ["user", "role", "team", "", "running", "queued", "stored", "priority"]))
    print("limits shown '-' are the server's defaults (NASPRUNE_USER_MAX_*)", file=sys.stderr)
    return 0


def _set(args) -> int:
    changes = {k: getattr(args, k) for k in ("role", "team", "disabled") if getattr(args, k) is not None}
    changes |= _limits(args)
    b = _backend(args)
    try:
        user = b.update_user(args.name, **changes)
    finally:
        b.close()
    state = "disabled" if user["disabled"] else "enabled"
    print(f"user '{user['name']}': {user['role']}, {state}" + (f", team {user['team']}" if user["team"] else ""))
    return 0


def _audit(args) -> int:
    b = _backend(args)
    try:
        page = b.audit(args.user, args.action, args.limit)
    finally:
        b.close()
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    rows = [[e["at"], e["user"] or "-", e["action"], e["target"] or "", e["detail"] or ""] for e in page["items"]]
    print(table(rows, ["at", "user", "action", "target", "detail"]))
    return 0


def _create_key(args) -> int:
    b = _backend(args)
    try:
        _print_key(b.create_key(args.user, args.label))
    finally:
        b.close()
    return 0


def _list_keys(args) -> int:
    b = _backend(args)
    try:
        keys = b.keys(args.user)
    finally:
        b.close()
    if args.json:
        print(json.dumps(keys, indent=2))
        return 0
    rows = [[k["id"], k["label"] or "", k["created_at"], k["revoked_at"] or "", k["last_used_at"] or ""] for k in keys]
    print(table(rows, ["id", "label", "created", "revoked", "last used"]))
    return 0


def _revoke(args) -> int:
    b = _backend(args)
    try:
        key = b.revoke_key(args.key_id)
    finally:
        b.close()
    print(f"revoked key {key['id']} of user '{key['user']}'")
    return 0
