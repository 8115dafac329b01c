"""The HTTP API against its own OpenAPI schema (schemathesis): whatever the
input, no 5xx, and every response conforms to the schema it documents.

Every check runs except positive_data_acceptance: a request can match the
schema and still be refused for what it means (an unknown compressor name, a
pool that does not exist), with a documented 4xx.  Findings so far (each now a
regression test in test_daemon.py): a 405 without its Allow header, an Allow
naming one of a path's methods, a JSON `false` accepted as a level, an
undocumented 409.
"""

from __future__ import annotations

import warnings

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")

from zswapd.http_api import ApiSettings, create_app  # noqa: E402
from zswapd.pools import PoolRegistry  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)

_registry = PoolRegistry()
_registry.create("default")
_registry.get("default").store(b"\x01" * 4096 * 4)
# With a token, as the document's bearer scheme says every route but /healthz
# takes: schemathesis checks that a request without it is refused.
_TOKEN = "schemathesis-token"
_AUTH = {"Authorization": f"Bearer {_TOKEN}"}
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(_registry, ApiSettings(token=_TOKEN)), headers=_AUTH
)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_and_never_fails(case: schemathesis.Case) -> None:
    from schemathesis.checks import positive_data_acceptance

    case.call_and_validate(headers=_AUTH, excluded_checks=[positive_data_acceptance])
