"""Schema-driven fuzzing (schemathesis) of the live server: valid and invalid requests generated
from its own OpenAPI document must never produce a 5xx, and every response must pass all of
schemathesis' checks (documented status, response schema, content type; valid data accepted,
invalid data rejected). Bounded: a few dozen examples per operation, about 30 s in all
(REASONREC_FUZZ_EXAMPLES=1000 for a long run). The worker runs (FAKE LLM, no delay) so events posted by the
fuzzer exercise the background path concurrently with the requests."""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")

from collections import Counter  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

from tests.test_serve_support import FAKE_SPEC, Server  # noqa: E402

EXAMPLES = int(os.environ.get("REASONREC_FUZZ_EXAMPLES", "150"))     # raise it for a long run


@pytest.fixture(scope="module")
def live(bundle, tmp_path_factory):
    store = tmp_path_factory.mktemp("fuzz") / "store.sqlite"
    with Server(bundle, store, "--llm", f"{FAKE_SPEC}?delay=0", "--top-n", "2") as srv:
        yield srv
        assert "Traceback" not in srv.log(), srv.log()


@pytest.fixture(scope="module")
def api_schema(live):
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    return schema


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_server_errors(api_schema, live, mode):
    """Drawn from schemathesis' strategy over all operations (its pytest plugin's lazy loader does
    not run under pytest 9, so the strategy is driven by hypothesis directly)."""
    outcomes = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=api_schema.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(base_url=live.url, timeout=30)
        outcomes[(case.method, case.path, response.status_code)] += 1
        assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text}"
        case.validate_response(response)      # every schemathesis check: statuses, schemas, headers, ...

    run()
    print(f"{mode}: {sum(outcomes.values())} cases, statuses {sorted(Counter(s for *_, s in outcomes.elements()).items())}")
    operations = {(m, p) for m, p, _ in outcomes}
    # every operation was reached (healthz and metrics take no input, so no negative cases for them)
    assert len(operations) >= (6 if mode == GenerationMode.POSITIVE else 4), outcomes
    if mode == GenerationMode.NEGATIVE:
        assert any(400 <= s < 500 for *_, s in outcomes), outcomes
