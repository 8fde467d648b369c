"""What the search tests share: the space of the session's prepared data dir (``prepared`` and ``budget``
live in tests/conftest.py, so that one session builds them once) and the check of a recommendation."""

from __future__ import annotations

from tests.conftest import SPACE  # noqa: F401  (the space of ``prepared``; imported from here by the tests)


def assert_verified_or_too_busy(rec, budget: float) -> None:
    """The recommendation was measured within ``budget``, or (on a machine too busy for a timing to
    be trusted, in every attempt) it is recommended unverified and says so: a test must not depend
    on a quiet CPU (tests/search/test_verify.py covers both outcomes deterministically)."""
    get = rec.get if isinstance(rec, dict) else lambda k: getattr(rec, k)
    if get("verified"):
        assert get("measured_latency_ms") <= budget and get("unverified_reason") is None
    else:
        why = get("unverified_reason") or ""
        assert "too busy" in why or "not consistent enough" in why, why
        assert get("measured_latency_ms") is None and get("latency_ms") <= budget
