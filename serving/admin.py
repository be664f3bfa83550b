"""Operator controls: promote a published model version, roll back to the previous one; list,
create, replace and delete merchandising rules (serving/merchandising.py).

Promote and rollback move the model store's ``CURRENT`` pointer with :meth:`ModelStore.rollback` (what
``streamrec model rollback`` does): serving hot-swaps within ``serving.model_poll_s`` and the learner adopts
the version as its champion. The admin key is enforced by ``serving.auth`` (every ``/admin/…``
path needs it); each action is recorded for the cockpit's markers (``serving.cockpit.record_action``).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path
from starlette.concurrency import run_in_threadpool

from serving.cockpit import record_action
from serving.merchandising import RuleStore
from streamrec.model_store import ModelNotFound, ModelStore
from streamrec.schemas import ErrorMessage, MerchandisingRule
from streamrec.settings import Settings
from streamrec.store import connect, shared_prefix


def admin_routes(s: Settings) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    def move(target: int, action: str, note: str | None) -> dict:
        store = ModelStore.from_settings(s)
        before = store.latest_version()
        try:
            store.rollback(target)
        except ModelNotFound as e:
            raise HTTPException(404, detail=str(e)) from None
        record_action(s, {"action": action, "from": before, "to": target, "note": note})
        return {"action": action, "previous_version": before, "serving_version": store.latest_version()}

    not_found: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorMessage, "description": "the body is not UTF-8 JSON"},
        404: {"model": ErrorMessage, "description": "no such model version on disk"},
    }
    nothing_before: dict[int | str, dict[str, Any]] = {
        409: {"model": ErrorMessage, "description": "no earlier model version to roll back to"}
    }

    @router.post("/models/{version}/promote", responses=not_found)
    async def promote(
        version: Annotated[int, Path(ge=1)], note: Annotated[str | None, Body(embed=True, max_length=500)] = None
    ) -> dict:
        """Serve VERSION (any published version still on disk)."""
        return await run_in_threadpool(move, version, "promote", note)

    @router.post("/models/rollback", responses={**not_found, **nothing_before})
    async def rollback(
        to: Annotated[int | None, Body(embed=True, ge=1, description="default: the served version's parent")] = None,
        note: Annotated[str | None, Body(embed=True, max_length=500)] = None,
    ) -> dict:
        """Serve the version before the current one (its parent when still on disk), or ``to``."""

        def target_then_move() -> dict:
            target = to if to is not None else ModelStore.from_settings(s).previous_version()
            if target is None:
                raise HTTPException(409, detail="no earlier model version to roll back to")
            return move(target, "rollback", note)

        return await run_in_threadpool(target_then_move)

    @functools.cache
    def rules() -> RuleStore:  # connected on first use: an app built for its schema alone needs no Redis
        return RuleStore(connect(s), shared_prefix(s))

    @router.get("/rules", response_model=list[MerchandisingRule])
    async def list_rules() -> list[MerchandisingRule]:
        """Every merchandising rule, active or not."""
        return await run_in_threadpool(lambda: rules().all())

    @router.post(
        "/rules",
        response_model=MerchandisingRule,
        status_code=201,
        responses={400: {"model": ErrorMessage, "description": "the body is not UTF-8 JSON"}},
    )
    async def put_rule(rule: MerchandisingRule) -> MerchandisingRule:
        """Create a rule (an id is assigned when it has none) or replace the rule of its id; serving
        applies it within ``search.rules_poll_s``."""
        saved = await run_in_threadpool(lambda: rules().put(rule))
        await run_in_threadpool(record_action, s, {"action": "rule", "rule": saved.id, "note": saved.name})
        return saved

    @router.delete(
        "/rules/{rule_id}", responses={404: {"model": ErrorMessage, "description": "no such rule"}}, status_code=204
    )
    async def delete_rule(rule_id: Annotated[str, Path(min_length=1, max_length=128)]) -> None:
        """Remove a rule."""
        if not await run_in_threadpool(lambda: rules().delete(rule_id)):
            raise HTTPException(404, detail=f"no rule {rule_id!r}")
        await run_in_threadpool(record_action, s, {"action": "rule deleted", "rule": rule_id})

    return router
