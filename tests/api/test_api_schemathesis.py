"""Property-based check of the whole API against its own /openapi.json (schemathesis).

The server runs on the test's event loop; schemathesis and hypothesis are synchronous, so
they run in a worker thread and talk to the server over real HTTP. Examples are bounded,
derandomized and not shrunk, so the run is quick and the same in CI every time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestClient
from api_helpers import SEED_BODY
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

EXAMPLES_PER_OPERATION = 20


def _fuzz(base_url: str, job_id: str) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    session = requests.Session()
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Positive cases aim at a real job so 200s are exercised; negative ones do not.
            overrides: dict[str, Any] = {}
            if "{id}" in operation.path and mode is GenerationMode.POSITIVE:
                overrides["path_parameters"] = {"id": job_id}
            strategy = operation.as_strategy(generation_mode=mode, **overrides)

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def check(case: schemathesis.Case) -> None:
                nonlocal ran
                ran += 1
                # positive_data_acceptance is left out: JSON Schema cannot state the
                # cross-field rules (grouping must match the data set, residualLayers <=
                # networkLayers), so schema-valid bodies may rightly get a 422.
                case.call_and_validate(
                    base_url=base_url,
                    session=session,
                    excluded_checks=[positive_data_acceptance],
                )

            try:
                check()
            except Unsatisfiable:
                continue  # no negative inputs exist for an operation without parameters
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # schemathesis raises failure groups; collect all
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    session.close()
    assert ran > 100, f"only {ran} cases ran"
    return failures


@pytest.mark.slow
async def test_schemathesis_finds_no_5xx_and_no_undocumented_response(api: TestClient) -> None:
    resp = await api.post("/jobs", json=SEED_BODY)
    job_id = (await resp.json())["id"]
    base_url = str(api.make_url("")).rstrip("/")
    failures = await asyncio.to_thread(_fuzz, base_url, job_id)
    assert not failures, "\n\n".join(failures)
