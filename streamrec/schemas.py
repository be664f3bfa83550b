"""The wire contract: events, catalog operations, dead letters and API responses.

Every boundary (Kafka consumers, the HTTP API, file adapters) validates with these models and
nothing else, so a payload is accepted or rejected the same way wherever it enters.
``decode_event`` / ``decode_catalog`` turn raw bytes into a model or raise :class:`Rejected`
with a machine-readable reason code; callers dead-letter the rejection, never drop it.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "impression")
EventType = Literal["view", "click", "add_to_cart", "purchase", "impression"]
InteractionType = Literal["view", "click", "add_to_cart", "purchase"]
INTERACTION_TYPES: tuple[str, ...] = get_args(InteractionType)

# Epoch milliseconds below this are almost certainly epoch *seconds* (≈ 1973 in ms).
_MIN_EPOCH_MS = 100_000_000_000
_MAX_EPOCH_MS = 32_503_680_000_000  # year 3000


def _id_from_int(v: Any) -> Any:
    """Many public datasets use integer ids; accept them as their decimal string."""
    if isinstance(v, bool):
        raise ValueError("an id must be a string or integer, not a boolean")
    if isinstance(v, int):
        return str(v)
    return v


# Characters no id may contain: C0/C1 controls (the feature writer joins fields with U+001F, logs
# split lines on U+000A), line/paragraph separators and bidirectional marks, overrides and isolates
# (an id shown in the cockpit must read as it is stored). Anything else, any script, is allowed.
ID_FORBIDDEN = r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_ID_FORBIDDEN_RE = re.compile(f"[{ID_FORBIDDEN}]")
# What the wire accepts, as a JSON Schema pattern: no forbidden character, at least one that is
# not whitespace (ids are stripped; Python's and the schema's \\s agree on what that is).
ID_PATTERN = rf"^[^{ID_FORBIDDEN}]*[^{ID_FORBIDDEN}\s][^{ID_FORBIDDEN}]*$"


def _id_characters(v: str) -> str:
    if not v:  # pydantic checks min_length before stripping: "  " would pass as ""
        raise ValueError("an id must contain a non-space character")
    found = _ID_FORBIDDEN_RE.search(v)
    if found:
        code = f"U+{ord(found.group()):04X}"
        raise ValueError(f"ids must not contain control characters or bidirectional marks: {code} at {found.start()}")
    return v


Id = Annotated[
    str,
    BeforeValidator(_id_from_int),
    StringConstraints(strip_whitespace=True, min_length=1, max_length=128),
    AfterValidator(_id_characters),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 128, "pattern": ID_PATTERN},
                {"type": "integer", "description": "taken as its decimal string"},
            ]
        },
        mode="validation",
    ),
]

# The ids of an impression list: strings only, so that "distinct" means the same on the wire and
# after validation (1 and "1" would be one id twice).
ListedId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=128),
    AfterValidator(_id_characters),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 128, "pattern": ID_PATTERN}, mode="validation"),
]


def _to_epoch_ms(v: Any) -> int:
    """Accept epoch milliseconds or ISO 8601; reject what is ambiguous instead of guessing."""
    if isinstance(v, bool):
        raise ValueError("ts must be epoch milliseconds or an ISO 8601 string")
    if isinstance(v, (int, float)):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("ts must be a finite number")
        ms = int(v)
    elif isinstance(v, str):
        text = v.strip()
        if text.lstrip("-").isdigit():
            ms = int(text)
        else:
            try:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"ts {v!r} is neither epoch milliseconds nor ISO 8601") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ms = int(dt.timestamp() * 1000)
    else:
        raise ValueError("ts must be epoch milliseconds or an ISO 8601 string")
    if ms < _MIN_EPOCH_MS:
        raise ValueError(f"ts {v!r} is before 1973 in epoch ms: epoch seconds? multiply by 1000")
    if ms > _MAX_EPOCH_MS:
        raise ValueError(f"ts {v!r} is after the year 3000")
    return ms


def _not_bool(v: Any) -> Any:
    """JSON true/false are not numbers (pydantic's lax mode would take them as 1 and 0)."""
    if isinstance(v, bool):
        raise ValueError("a boolean is not a number")
    return v


NotBool = BeforeValidator(_not_bool)

EpochMs = Annotated[
    int,
    BeforeValidator(_to_epoch_ms),
    WithJsonSchema(
        {
            "type": "number",
            "minimum": _MIN_EPOCH_MS,
            "maximum": _MAX_EPOCH_MS,
            "description": "epoch milliseconds (an ISO 8601 string is also accepted, without zone = UTC)",
        },
        mode="validation",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Event(_Strict):
    """A shopper action. ``event_id`` is the idempotency key for every downstream effect."""

    event_id: Id
    type: EventType
    user_id: Id
    ts: EpochMs
    item_id: Id | None = None
    request_id: Id | None = None
    session_id: Id | None = None
    query: Annotated[str, StringConstraints(max_length=512)] | None = None
    position: Annotated[int, Field(ge=0, le=10_000), NotBool] | None = None
    item_ids: Annotated[list[ListedId], Field(min_length=1, max_length=200)] | None = None
    # an impression's results at this index of item_ids and the next were swapped at random
    # (serving's exploration: the learner estimates position bias from such pages)
    swapped: Annotated[int, Field(ge=0, le=198), NotBool] | None = None

    @model_validator(mode="after")
    def _shape_matches_type(self) -> Event:
        if self.type == "impression":
            if self.item_ids is None or self.request_id is None:
                raise ValueError("an impression needs request_id and item_ids (in shown order)")
            if self.item_id is not None:
                raise ValueError("an impression carries item_ids, not item_id")
            if len(set(self.item_ids)) != len(self.item_ids):
                raise ValueError("impression item_ids must not repeat")
            if self.swapped is not None and self.swapped >= len(self.item_ids) - 1:
                raise ValueError("swapped must name a position that has a next one in item_ids")
        else:
            if self.item_id is None:
                raise ValueError(f"a {self.type} event needs item_id")
            if self.item_ids is not None:
                raise ValueError("only impressions carry item_ids")
            if self.swapped is not None:
                raise ValueError("only impressions carry swapped")
        return self


Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000, pattern=r"\S")]


# A keyword (category, brand, keyword attribute value) is a key of the filters and facets, and a
# category is also a field of the feature writer's records: both obey the id character rule.
Keyword = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=f"^[^{ID_FORBIDDEN}]*$")
]
AttributeName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Number = Annotated[float, Field(allow_inf_nan=False, strict=True)]  # "12" is a keyword, not a number
# keyword, number, or several keywords (sizes in stock, colours); a number is compared by range
AttributeValue = (
    Annotated[str, StringConstraints(max_length=200, pattern=f"^[^{ID_FORBIDDEN}]+$")]
    | Number
    | (Annotated[list[Keyword], Field(min_length=1, max_length=50)])
)
MAX_ATTRIBUTES = 64
# names outside AttributeName's pattern are refused by the schema too (patternProperties alone admits them)
ATTRIBUTE_MAP = Field(max_length=MAX_ATTRIBUTES, json_schema_extra={"additionalProperties": False})
CATEGORY_SEPARATOR = ">"  # "Tools > Power Tools > Drills": a filter on "Tools" matches every level below


CategoryPath = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200, pattern=f"^[^{ID_FORBIDDEN}]*$")]


class CatalogOp(_Strict):
    """An upsert, patch or delete of one catalog item.

    A ``patch`` is a JSON merge patch (RFC 7396) of the item's fields: what it names replaces the
    current value, ``null`` removes it, ``attributes`` merge name by name. A patch that leaves the
    embedded text alone (price, stock, brand, attributes) reuses the item's vector: no encoder call.
    """

    op: Literal["upsert", "patch", "delete"]
    item_id: Id
    ts: EpochMs
    title: Title | None = None
    description: Annotated[str, StringConstraints(max_length=20_000)] | None = None
    category: CategoryPath | None = Field(
        None, description=f"a path with '{CATEGORY_SEPARATOR}' between levels is filtered and faceted at every level"
    )
    price: Annotated[float, Field(ge=0, allow_inf_nan=False), NotBool] | None = None
    brand: Keyword | None = None
    in_stock: Annotated[bool, Field(strict=True)] | None = Field(
        None, description="wins over stock when given (a backorder is in stock with stock 0); unset: stock > 0"
    )
    stock: Annotated[int, Field(ge=0), NotBool] | None = Field(None, description="units available")
    attributes: Annotated[dict[AttributeName, AttributeValue | None], ATTRIBUTE_MAP] | None = Field(
        None, description="typed attributes to filter and facet on; in a patch a null value removes one"
    )

    @model_validator(mode="after")
    def _shape_matches_op(self) -> CatalogOp:
        given = self.model_fields_set - {"op", "item_id", "ts"}
        if self.op == "upsert":
            if self.title is None:
                raise ValueError("an upsert needs a title")
            if self.attributes and any(v is None for v in self.attributes.values()):
                raise ValueError("a null attribute value removes it in a patch; an upsert lists what the item has")
        elif self.op == "delete":
            if any(getattr(self, f) is not None for f in given):
                raise ValueError("a delete carries only op, item_id and ts")
        else:
            if not given:
                raise ValueError("a patch names at least one field to change")
            if "title" in given and self.title is None:
                raise ValueError("a patch cannot remove the title")
        return self


# --- decoding with reasons -------------------------------------------------------------------

RejectReason = Literal["oversize", "not_utf8", "not_json", "not_object", "invalid", "unknown_type", "unknown_item"]


class Rejected(Exception):
    """A payload that must go to the dead-letter topic, with why."""

    def __init__(self, reason: RejectReason, error: str):
        super().__init__(f"{reason}: {error}")
        self.reason: RejectReason = reason
        self.error = error


def _load_object(raw: bytes, max_bytes: int) -> dict:
    if len(raw) > max_bytes:
        raise Rejected("oversize", f"payload is {len(raw)} bytes, limit {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected("not_utf8", str(e)) from None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise Rejected("not_json", str(e)[:500]) from None
    if not isinstance(obj, dict):
        raise Rejected("not_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def validation_message(e: ValidationError) -> str:
    """One readable line per problem: 'field: message'."""
    parts = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(event)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)[:2000]


def validate_event(obj: Any) -> Event:
    """Validate an already-parsed object (the HTTP path); raises :class:`Rejected`."""
    if not isinstance(obj, dict):
        raise Rejected("not_object", f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("type") not in EVENT_TYPES and "type" in obj:
        shown = repr(obj.get("type"))[:100]  # a 1 MB "type" must not come back whole
        raise Rejected("unknown_type", f"type {shown} is not one of {', '.join(EVENT_TYPES)}")
    try:
        return Event.model_validate(obj)
    except ValidationError as e:
        raise Rejected("invalid", validation_message(e)) from None


def validate_catalog(obj: Any) -> CatalogOp:
    if not isinstance(obj, dict):
        raise Rejected("not_object", f"expected a JSON object, got {type(obj).__name__}")
    try:
        return CatalogOp.model_validate(obj)
    except ValidationError as e:
        raise Rejected("invalid", validation_message(e)) from None


def decode_event(raw: bytes, max_bytes: int = 64 * 1024) -> Event:
    return validate_event(_load_object(raw, max_bytes))


def decode_catalog(raw: bytes, max_bytes: int = 64 * 1024) -> CatalogOp:
    return validate_catalog(_load_object(raw, max_bytes))


def encode(model: BaseModel) -> bytes:
    """Canonical wire bytes: JSON without nulls, so re-encoding is stable; a patch keeps the nulls it
    was given (they remove fields)."""
    if isinstance(model, CatalogOp) and model.op == "patch":
        return model.model_dump_json(exclude_unset=True).encode()
    return model.model_dump_json(exclude_none=True).encode()


class DeadLetter(_Strict):
    """What lands on ``streamrec.dlq``: enough to understand, fix and re-publish the input."""

    reason: RejectReason
    error: str
    source_topic: str
    source_partition: int | None = None
    source_offset: int | None = None
    source_key: str | None = None
    received_ms: int
    payload_b64: str = Field(description="the original bytes, base64, always")
    payload_text: str | None = Field(None, description="the original bytes as text, when UTF-8")

    @classmethod
    def of(
        cls,
        rejected: Rejected,
        raw: bytes,
        *,
        topic: str,
        partition: int | None = None,
        offset: int | None = None,
        key: bytes | None = None,
        now_ms: int,
    ) -> DeadLetter:
        try:
            text: str | None = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return cls(
            reason=rejected.reason,
            error=rejected.error,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            source_key=key.decode("utf-8", "replace") if key is not None else None,
            received_ms=now_ms,
            payload_b64=base64.b64encode(raw).decode(),
            payload_text=text,
        )

    def original_bytes(self) -> bytes:
        return base64.b64decode(self.payload_b64)


# --- HTTP responses ----------------------------------------------------------------------------


class ResultItem(BaseModel):
    item_id: str
    score: float
    title: str
    reasons: list[str]
    category: str | None = None
    brand: str | None = None
    price: float | None = None
    in_stock: bool = Field(True, description="false only where a request asked for out-of-stock products too")


class FacetValue(BaseModel):
    value: str = Field(description="a brand, category path, price bucket (lo..hi), availability or attribute value")
    count: int


class Facet(BaseModel):
    """One facet's counts, most frequent first; a numeric attribute gives its range instead."""

    values: list[FacetValue] = Field(default_factory=list)
    min: float | None = None
    max: float | None = None


class Facets(BaseModel):
    """Counts over the items the query matches, each facet under every filter but its own (choosing
    one brand keeps the other brands' counts)."""

    counts: dict[str, Facet]
    matched: int = Field(description="items the query matches that pass every filter")
    exhaustive: bool = Field(
        description="false when the query matches more products lexically than catalog.facet_depth: the counts "
        "cover the best-scoring ones"
    )


class ResultList(BaseModel):
    request_id: str
    items: list[ResultItem]
    model_version: int
    index_version: int
    variant: str = Field("full", description="which ranking produced the list (GET /search?variant=)")
    degraded: list[str] = Field(
        default_factory=list,
        description="what this answer had to do without (e.g. the feature store was unreachable); empty = full",
    )
    facets: Facets | None = Field(None, description="with GET /search?facets=...")
    offset: int = Field(0, description="position of the first item in the whole ranking (GET /search?offset=)")
    total: int | None = Field(
        None, description="products the ranking holds for its pages (GET /search): offsets past it are empty"
    )


class Suggestion(BaseModel):
    text: str
    score: float = Field(description="decayed, weighted count of the clicks, adds to cart and purchases it led to")


class SuggestionList(BaseModel):
    suggestions: list[Suggestion]
    corrected: str | None = Field(None, description="the typed text with typos fixed, when that found more")


class MerchandisingRule(_Strict):
    """A merchandiser's rule for /search (serving/merchandising.py says how rules apply)."""

    id: Id | None = Field(None, description="assigned when created without one")
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    action: Literal["pin", "boost", "bury", "hide"]
    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)] | None = None
    match: Literal["exact", "contains"] = Field("exact", description="contains: the search holds all the query's terms")
    category: CategoryPath | None = Field(None, description="requests filtered on this category or below it")
    items: Annotated[list[Id], Field(max_length=100)] = Field(default_factory=list)
    brands: Annotated[list[Keyword], Field(max_length=50)] = Field(
        default_factory=list, description="every product of these brands (not for pin)"
    )
    position: Annotated[int, Field(ge=1, le=100), NotBool] = Field(1, description="pin: where the first item goes")
    amount: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False), NotBool] = Field(
        0.5, description="boost: added score, as a share of the list's best score"
    )
    start_ms: EpochMs | None = None
    end_ms: EpochMs | None = None

    @model_validator(mode="after")
    def _applies_to_something(self) -> MerchandisingRule:
        if self.query is None and not self.category:
            raise ValueError("a rule needs a query or a category to apply to")
        if not self.items and not self.brands:
            raise ValueError("a rule needs items or brands")
        if self.action == "pin" and (self.brands or not self.items):
            raise ValueError("a pin names items (in the order they go), not brands")
        if self.start_ms is not None and self.end_ms is not None and self.end_ms <= self.start_ms:
            raise ValueError("end_ms must be after start_ms")
        return self


class ErrorMessage(BaseModel):
    """The body of every 4xx/5xx answer whose detail is one sentence."""

    detail: str


class PublishRejection(BaseModel):
    index: int
    error: str


class PublishResult(BaseModel):
    accepted: int
    rejected: list[PublishRejection]


# --- request bodies as JSON Schema (the OpenAPI contract) ------------------------------------------
# Event and CatalogOp check with validators what their fields cannot say (an impression needs
# request_id and item_ids, a delete carries nothing but op, item_id and ts), so their own schemas
# would admit objects they refuse. The API declares instead one model per shape, each narrowing the
# fields of the model it comes from, united by the field that tells them apart: what validates
# against a shape is accepted, what validates against none is refused. These models only describe
# the wire; validation stays with Event and CatalogOp (their validators are inherited, so a shape
# can never accept what its model refuses).


class InteractionEvent(Event):
    """A view, click, add to cart or purchase of one item."""

    type: InteractionType
    item_id: Id
    item_ids: None = None
    swapped: None = None


class ImpressionEvent(Event):
    """A list shown to a shopper: the served ``request_id`` and its distinct ``item_ids`` in shown order."""

    type: Literal["impression"]
    request_id: Id
    item_id: None = None
    item_ids: Annotated[list[ListedId], Field(min_length=1, max_length=200, json_schema_extra={"uniqueItems": True})]


class CatalogUpsert(CatalogOp):
    """An item added or replaced whole."""

    op: Literal["upsert"]
    title: Title
    attributes: Annotated[dict[AttributeName, AttributeValue], ATTRIBUTE_MAP] | None = None  # type: ignore[assignment]  # no nulls: narrower on the wire


class CatalogPatch(CatalogOp):
    """Some fields of an existing item changed (JSON merge patch): a price or stock change needs no
    re-embedding. A patch of an item the index does not have is dead-lettered."""

    op: Literal["patch"]

    @staticmethod
    def _schema(schema: dict[str, Any]) -> None:
        """At least one field beside op, item_id and ts; the title may change but not go."""
        schema["minProperties"] = 4
        title = schema["properties"]["title"]
        title["anyOf"] = [t for t in title["anyOf"] if t.get("type") != "null"]

    model_config = ConfigDict(json_schema_extra=_schema)


class CatalogDelete(CatalogOp):
    """An item removed: nothing but op, item_id and ts."""

    op: Literal["delete"]
    title: None = None
    description: None = None
    category: None = None
    price: None = None
    brand: None = None
    in_stock: None = None
    stock: None = None
    attributes: None = None


EventShape = Annotated[InteractionEvent | ImpressionEvent, Field(discriminator="type")]
CatalogShape = Annotated[CatalogUpsert | CatalogPatch | CatalogDelete, Field(discriminator="op")]

COMPONENT_REF = "#/components/schemas/{model}"


class BodySchema(NamedTuple):
    schema: dict[str, Any]
    components: dict[str, Any]  # the models ``schema`` refers to, for #/components/schemas


def batch_json_schema(one: Any, max_items: int) -> BodySchema:
    """A request body of ``one`` (a shape above): one object, or an array of at most ``max_items``."""
    body = TypeAdapter(one | Annotated[list[one], Field(max_length=max_items)])
    schema = body.json_schema(ref_template=COMPONENT_REF, mode="validation")
    return BodySchema(schema, schema.pop("$defs", {}))
