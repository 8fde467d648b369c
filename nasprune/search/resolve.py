"""A search job resolved once, at the edge: its names turned into the objects everything below takes.

A job names a registered space *or* an uploaded model, and may name a dataset other than the space's.
:func:`job_spaces` makes that choice in one place: the service's submit checks (the dataset fits, tier 0
can run) and the worker's :func:`nasprune.search.runner.run_job` both call it, so the two never
disagree on which space a job searches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nasprune.paths import JobFiles, job_files, model_space_file
from nasprune.registry import load_space
from nasprune.search.job import JobContext, SearchJob
from nasprune.space import GraphSpace


@dataclass(frozen=True)
class JobSpaces:
    """The two spaces of a job: ``space`` is what it trains and searches (its dataset is the job's);
    ``table_space`` is what its latency tables are keyed on (the data does not change latency, so
    one table serves the space with any dataset)."""

    space: GraphSpace
    table_space: GraphSpace


def job_spaces(job: SearchJob, data_dir: str | Path | None = None) -> JobSpaces:
    """Parse the job's space once: an uploaded model's derived space (beside its weights) or a
    registered space, with the job's ``dataset`` in place of the space's own (its own checkpoint
    then: the space's digest covers the dataset)."""
    table_space = load_space(model_space_file(job.model, data_dir) if job.model is not None else job.space)
    space = table_space
    if job.dataset is not None and job.dataset != table_space.dataset:
        space = table_space.model_copy(update={"dataset": job.dataset})
    return JobSpaces(space, table_space)


@dataclass(frozen=True)
class ResolvedJob:
    """What :func:`nasprune.search.runner.run_job` works on besides the job: its spaces, where its files go."""

    spaces: JobSpaces
    files: JobFiles

    @property
    def space(self) -> GraphSpace:
        return self.spaces.space


def resolve(job: SearchJob, ctx: JobContext) -> ResolvedJob:
    """The job's spaces parsed and its output folder laid out (created), once per run."""
    files = job_files(ctx.output_dir)
    files.root.mkdir(parents=True, exist_ok=True)
    return ResolvedJob(job_spaces(job, ctx.data_dir), files)
