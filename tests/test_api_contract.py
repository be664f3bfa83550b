"""Property-based fuzzing of the HTTP API against its own OpenAPI schema (schemathesis, every
check), on the real app over real HTTP with the embedded broker and Redis: no 5xx, every status
code, content type and header answered is declared, schema-valid requests are accepted and
schema-invalid ones refused. A bounded number of examples per operation keeps it within a minute.

The write routes accept batches object by object (valid objects published, invalid ones reported by
index), so for them "refused" means: 4xx, or 202 with at least one rejection; and "accepted" means
202 with none."""

from __future__ import annotations

from typing import Any, cast

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, settings
from pydantic import ValidationError
from schemathesis.specs.openapi.checks import negative_data_rejection

from serving.app import create_app
from streamrec import bus
from streamrec.schemas import MerchandisingRule
from streamrec.settings import Settings
from tests.live_app import build_app, serve


@pytest.fixture(scope="module")
def base_url(kafka_broker, redis_server, tmp_path_factory):
    from tests.conftest import isolated_settings

    s = isolated_settings(kafka_broker, redis_server, tmp_path_factory.mktemp("contract") / "state")
    producer = bus.make_producer(s, max_block_ms=5_000)
    with serve(build_app(s, producer)) as url:
        yield url
    producer.close(timeout=5)


# The contract is static: the schema of an app built on nothing is the one every deployment serves
# (schemathesis' lazy fixture loader does not run on pytest 9, so the schema is loaded at import).
schema = schemathesis.openapi.from_dict(create_app(Settings(), cast(Any, None), cast(Any, None)).openapi())


# The write routes' bodies, to tell a schema-valid batch from an invalid one by the schema itself
# (a "negative" case may still be valid once serialised); their models are components, referred to
# from the body as #/components/schemas/…, so each validator's document carries them.
BODIES = {
    ("POST", path): jsonschema_rs.validator_for(
        {
            **schema.raw_schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"],
            "components": schema.raw_schema["components"],
        }
    )
    for path in ("/events", "/catalog")
}


def a_rule_beyond_the_schema(path: str, body: Any) -> bool:
    """A merchandising rule breaking what JSON Schema cannot state (a query or a category; items or
    brands; a pin names items; end after start): refused with 422 by MerchandisingRule's validator."""
    if path != "/admin/rules" or not isinstance(body, dict):
        return False
    try:
        MerchandisingRule.model_validate(body)
    except ValidationError as e:
        return all(err["type"] == "value_error" and not err["loc"] for err in e.errors())
    return False


def beyond_the_schema(body: Any) -> bool:
    """A body breaking the one rule JSON Schema cannot state: an impression's ``swapped`` must name a
    position that has a next one in its ``item_ids`` (``streamrec.schemas.Event``); refused with 422."""
    objects = body if isinstance(body, list) else [body]
    return any(
        isinstance(o, dict)
        and isinstance(o.get("swapped"), int | float)
        and isinstance(o.get("item_ids"), list)
        and o["swapped"] >= len(o["item_ids"]) - 1
        for o in objects
    )


# Query parameters that repeat (brand=a&brand=b): a "negative" value generated for one (a number, an
# object) is still a list of strings once in a URL, which the route rightly accepts.
REPEATED = {"brand", "attr", "facets", "item_id"}


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, base_url):
    body = BODIES.get((case.method.upper(), case.path))
    valid = body is not None and isinstance(case.body, (dict, list)) and body.is_valid(case.body)
    assume(not (valid and beyond_the_schema(case.body)))
    assume(not a_rule_beyond_the_schema(case.path, case.body))
    repeated = bool(REPEATED & set(case.query or {}))
    excluded = [negative_data_rejection] if body or repeated else []
    response = case.call_and_validate(base_url=base_url, excluded_checks=excluded)
    if body is None:
        return
    if valid:
        # a keyless write from loopback is allowed and the broker is up: every valid object is published
        assert response.status_code == 202, f"{response.status_code} {response.text[:500]}; body {case.body!r}"
        rejected = response.json()["rejected"]
        assert rejected == [], f"schema-valid objects rejected: {rejected}; body {case.body!r}"
    elif response.status_code == 202:
        assert response.json()["rejected"], f"schema-invalid body accepted whole: {case.body!r}"
    else:
        assert 400 <= response.status_code < 500, f"{response.status_code} {response.text[:500]}"
