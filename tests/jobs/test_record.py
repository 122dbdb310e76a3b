"""The job record declares each run option as a field: same name, type, default, bounds and
help as its `Option`, so a run option added without its field (or a field that drifts from
its option) fails here rather than in a type checker's blind spot."""

from __future__ import annotations

from typing import get_type_hints

from service.jobs.options import RUN_NAMES, RUN_OPTIONS
from service.jobs.record import Job, JobRecord


def test_the_run_options_are_the_fields_job_adds() -> None:
    added = [name for name in Job.model_fields if name not in JobRecord.model_fields]
    assert added == list(RUN_NAMES)


def test_each_run_option_field_matches_its_option() -> None:
    hints = get_type_hints(Job)
    for option in RUN_OPTIONS:
        field = Job.model_fields[option.name]
        expected_type, expected = option.pydantic_field(request=False)
        assert hints[option.name] == expected_type, option.name
        assert field.default == option.default, option.name
        assert field.description == option.help, option.name
        assert field.title == option.label, option.name
        assert repr(field.metadata) == repr(expected.metadata), option.name


def test_a_job_without_run_options_gets_their_defaults() -> None:
    doc = {
        "_id": "665f1c2e9b1e8a3d4c2b1a00",
        "status": "Pending",
        "hyperparameters": {},
        "createdAt": "2025-01-31T12:00:00.000Z",
        "updatedAt": "2025-01-31T12:00:00.000Z",
    }
    job = Job.from_doc(doc)
    assert isinstance(job, Job)
    assert {o.name: getattr(job, o.name) for o in RUN_OPTIONS} == {
        o.name: o.default for o in RUN_OPTIONS
    }
