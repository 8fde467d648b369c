"""Trial storage: a journal file that a crash cut in the middle of a write is repaired on open."""

from __future__ import annotations

import shutil

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from nasprune.search.study import journal_url, make_storage, prepare_storage, repair_journal


def _add_trials(storage, n: int) -> None:
    study = optuna.create_study(study_name="job", storage=storage, load_if_exists=True)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)


def _complete(storage) -> int:
    study = optuna.load_study(study_name="job", storage=storage)
    return len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))


@pytest.fixture
def cut_journal(tmp_path):
    """A journal with 3 finished trials and the first half of a 4th trial's write (a SIGKILL mid-append)."""
    path = tmp_path / "trials.journal"
    _add_trials(make_storage(journal_url(path)), 3)
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"op_code":4,"worker_id":"dead","study_id":0,"datetime_sta')
    return path, len(whole)


def test_optuna_alone_breaks_on_a_journal_cut_mid_write(cut_journal, tmp_path):
    """Why the repair exists: appending after the partial line makes the study unreadable."""
    path, _ = cut_journal
    copy = tmp_path / "copy.journal"
    shutil.copy(path, copy)
    with pytest.raises(ValueError):  # json.JSONDecodeError, or Optuna's "Invalid log format"
        _add_trials(JournalStorage(JournalFileBackend(str(copy))), 1)
        _complete(JournalStorage(JournalFileBackend(str(copy))))


def test_a_journal_cut_mid_write_is_repaired_on_open(cut_journal, caplog):
    path, whole = cut_journal
    url = journal_url(path)
    with caplog.at_level("WARNING"):
        storage = make_storage(url)
    assert path.stat().st_size == whole, "the partial line is cut, every finished write kept"
    assert "dropped" in caplog.text and "unfinished" in caplog.text
    _add_trials(storage, 2)
    assert _complete(make_storage(url)) == 5
    assert repair_journal(path) == 0  # a whole journal is left alone


def test_prepare_storage_creates_what_a_job_opens(tmp_path):
    url = journal_url(tmp_path / "sub" / "trials.journal")
    prepare_storage(url)
    prepare_storage(url)  # idempotent
    assert (tmp_path / "sub" / "trials.journal").exists()
    sqlite = f"sqlite:///{tmp_path / 'trials.db'}"
    prepare_storage(sqlite)
    _add_trials(make_storage(sqlite), 1)
    assert _complete(make_storage(sqlite)) == 1
