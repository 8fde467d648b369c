"""The OpenAPI document against the server (issue 14, point 9): schemathesis generates requests from
``/openapi.json`` (data that fits the schema and data that does not) for every operation, sends them
to a real uvicorn server on loopback and checks each answer against the document: no 5xx, status
codes, content types, headers and bodies as declared. Bounded: a few hundred cases in all."""

from __future__ import annotations

from collections import Counter

import schemathesis  # the dev extra has it (pinned in constraints.txt)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from nasprune.settings import Settings
from tests.service.fakes import instant_runner
from tests.service.server import running

CASES_PER_OPERATION_AND_MODE = 16
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


def test_server_conforms_to_its_openapi_document(tmp_path):
    import requests
    from schemathesis import checks as st_checks

    s = Settings(data_dir=tmp_path / "data", poll_s=0.05, max_trials_per_job=50, max_queued_jobs=20)
    with running(s, instant_runner) as (client, _):
        base = str(client.base_url)
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        run = Run(base, requests.Session(), [getattr(st_checks, name) for name in CHECKS])
        for result in schema.get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run.exercise(result.ok(), mode)

    total = sum(run.cases.values())
    print(
        f"\nschemathesis: {total} cases over {len(run.cases)} operations, {len(run.server_errors)} 5xx, "
        f"{len(run.violations)} schema violations; per operation: {dict(run.cases)}"
    )
    assert 200 <= total <= 1000, run.cases
    assert not run.server_errors, "\n".join(run.server_errors[:10])
    assert not run.violations, "\n".join(sorted(set(run.violations))[:20])


def test_users_mode_conforms_with_the_keys_of_two_users(tmp_path):
    """The same run on a server with users (NASPRUNE_AUTH=users): requests alternate between an admin's key and a
    member's, so admin routes answer for real to one and 403 to the other, and ownership checks run on every id."""
    import requests
    from schemathesis import checks as st_checks

    class TwoKeys(requests.Session):
        def __init__(self, keys: list[str]):
            super().__init__()
            self.keys, self.n = keys, 0

        def request(self, method, url, *args, **kwargs):
            self.n += 1
            headers = {**(kwargs.pop("headers", None) or {}), "Authorization": f"Bearer {self.keys[self.n % 2]}"}
            return super().request(method, url, *args, headers=headers, **kwargs)

    s = Settings(data_dir=tmp_path / "data", poll_s=0.05, max_trials_per_job=50, max_queued_jobs=20, auth="users")
    with running(s, instant_runner) as (client, app):
        users = app.state.services.users
        users.add_user("root", "admin")
        users.add_user("alice", "member")
        keys = [users.create_key("root")[1], users.create_key("alice")[1]]
        base = str(client.base_url)
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        run = Run(base, TwoKeys(keys), [getattr(st_checks, name) for name in CHECKS])
        for result in schema.get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                run.exercise(result.ok(), mode)

    total = sum(run.cases.values())
    print(
        f"\nschemathesis, users mode (an admin's and a member's key): {total} cases over {len(run.cases)} "
        f"operations, {len(run.server_errors)} 5xx, {len(run.violations)} schema violations"
    )
    assert 200 <= total <= 1000, run.cases
    assert not run.server_errors, "\n".join(run.server_errors[:10])
    assert not run.violations, "\n".join(sorted(set(run.violations))[:20])


class Run:
    """Cases sent, and what went wrong, over all operations."""

    def __init__(self, base: str, session, checks: list):
        self.base, self.session, self.checks = base, session, checks
        self.cases: Counter[str] = Counter()
        self.server_errors: list[str] = []
        self.violations: list[str] = []

    def exercise(self, operation, mode: GenerationMode) -> None:
        from schemathesis.core.failures import FailureGroup

        label = operation.label

        @settings(
            max_examples=CASES_PER_OPERATION_AND_MODE,
            deadline=None,
            database=None,
            derandomize=True,  # the same cases every run
            phases=[Phase.explicit, Phase.generate],  # no shrinking: every failure is recorded
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def send(case):
            response = case.call(base_url=self.base, session=self.session, timeout=30)
            self.cases[label] += 1
            if response.status_code >= 500:
                self.server_errors.append(f"{label}: {response.status_code} {response.text[:200]}")
            try:
                case.validate_response(response, checks=self.checks)
            except FailureGroup as group:
                for failure in group.exceptions:
                    self.violations.append(f"{label} [{mode}]: {failure.title}: {failure.message[:300]}")

        try:
            send()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, label  # nothing in it can be made invalid
