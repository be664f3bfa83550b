"""Catalog patches (JSON merge patch, RFC 7396) folded into whole items.

Why here and not in serving: the vectors topic carries each item whole (vector + metadata), so every
replica sees one consistent state; the index updater, the one writer of that topic, resolves a patch
against the item it last published and sends the result like any upsert. When the patch leaves the
embedded text alone the content hash is unchanged and the vector is reused (``pipeline._plan``).

>>> base = CatalogOp(op="upsert", item_id="7", ts=1_700_000_000_000, title="Drill", price=99.0,
...                  attributes={"volts": 18, "colour": "blue"})
>>> patch = CatalogOp(op="patch", item_id="7", ts=1_700_000_001_000, price=79.0, attributes={"colour": None})
>>> merged = merge(base, patch)
>>> (merged.op, merged.title, merged.price, merged.attributes, merged.ts)
('upsert', 'Drill', 79.0, {'volts': 18.0}, 1700000001000)
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from streamrec.schemas import CatalogOp, Rejected, validation_message
from streamrec.vector_index import ItemMeta

FIXED = frozenset({"op", "item_id", "ts"})


def merge(base: CatalogOp, patch: CatalogOp) -> CatalogOp:
    """``base`` (an upsert or an earlier patch of the same item) with ``patch`` applied, dated at the
    patch. Onto an upsert a null removes the field; onto a patch it is kept, to remove it later."""
    if patch.op != "patch" or base.item_id != patch.item_id:
        raise ValueError("merge applies a patch of the same item")
    fields: dict[str, Any] = base.model_dump(include=base.model_fields_set)
    whole = base.op == "upsert"
    for name in patch.model_fields_set - FIXED:
        value = getattr(patch, name)
        if name == "attributes" and value is not None:
            attributes = dict(fields.get("attributes") or {})
            for key, v in value.items():
                if v is None and whole:
                    attributes.pop(key, None)
                else:
                    attributes[key] = v
            fields["attributes"] = attributes
        elif value is None and whole:
            fields.pop(name, None)
        else:
            fields[name] = value
    fields["ts"] = patch.ts
    try:
        return CatalogOp.model_validate(fields)
    except ValidationError as e:  # e.g. more attributes than allowed once merged
        raise Rejected("invalid", f"the item once patched: {validation_message(e)}") from None


def as_upsert(item_id: str, meta: ItemMeta, ts: int) -> CatalogOp:
    """The upsert that would produce ``meta``: what a patch of a published item applies to."""
    fields: dict[str, Any] = {
        "op": "upsert",
        "item_id": item_id,
        "ts": ts,
        "title": meta.title,
        "description": meta.description,
        "category": meta.category,
        "price": meta.price,
        "brand": meta.brand,
        "in_stock": meta.in_stock,
        "stock": meta.stock,
        "attributes": dict(meta.attributes) or None,
    }
    return CatalogOp.model_validate({k: v for k, v in fields.items() if v is not None})
