"""Decisions on an item (approve, reject, correct) and undoing them, each with an audit entry.

A decision needs the item to be pending and held by the reviewer (or held by nobody), or already
decided by the same reviewer (then it is amended). Everything is checked before anything changes,
so a refused request leaves the item and the log as they were.

Undo restores the state recorded in the reviewer's latest not-yet-undone decision, provided
nobody changed the item since; a restored pending item is held by the reviewer again.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.review.errors import Conflict, FieldError, NotFound
from fleet.review.models import Audit, Item, Reviewer
from fleet.review.queue import DONE, PENDING, get_item, release_mine
from fleet.review.schemas import Correction

Action = Literal["approve", "reject", "correct"]
DECISION_OF = {"approve": "approved", "reject": "rejected", "correct": "corrected"}
DECISION_ACTIONS = tuple(DECISION_OF)
STATE_FIELDS = ("status", "decision", "labels", "reviewed_by", "reviewed_at", "review_seconds")


def state(item: Item) -> dict:
    return {k: getattr(item, k) for k in STATE_FIELDS}


def _same_boxes(a: list[dict], b: list[dict], tol: float = 0.5) -> bool:
    key = lambda d: (d["class"], *d["box"])  # noqa: E731
    a, b = sorted(a, key=key), sorted(b, key=key)
    return len(a) == len(b) and all(
        x["class"] == y["class"] and all(abs(p - q) <= tol for p, q in zip(x["box"], y["box"], strict=True))
        for x, y in zip(a, b, strict=True))


def check_correction(item: Item, correction: Correction, palette: list[str]) -> list[dict]:
    """The correction's boxes as labels; FieldError if a box leaves the frame or uses an unknown class."""
    allowed = set(palette) | set(item.classes or []) | {p["class"] for p in item.predictions}
    labels = []
    for i, lb in enumerate(correction.boxes):
        x1, y1, x2, y2 = lb.box
        if x1 < -1 or y1 < -1 or x2 > item.width + 1 or y2 > item.height + 1:
            raise FieldError(f"boxes[{i}].box", f"{list(lb.box)} is outside the {item.width}x{item.height} frame")
        if lb.class_name not in allowed:
            raise FieldError(f"boxes[{i}].class", f"unknown class {lb.class_name!r}; known: {sorted(allowed)}")
        labels.append(lb.as_label())
    return labels


def decide(s: Session, item_id: str, reviewer: Reviewer, action: Action, correction: Correction | None,
           palette: list[str], now: float, ttl_s: float) -> tuple[Item, bool]:
    """(the decided item, whether this amended an earlier decision of the same reviewer)."""
    if action not in DECISION_OF:
        raise FieldError("action", f"unknown action {action!r}")
    item = get_item(s, item_id, lock=True)
    amend = item.status == DONE
    if amend and item.reviewed_by != reviewer.id:
        raise Conflict(f"item {item_id!r} was already reviewed by another reviewer")
    if not amend and item.claimed_by not in (None, reviewer.id) and (item.claimed_at or 0) >= now - ttl_s:
        raise Conflict(f"item {item_id!r} is claimed by another reviewer")

    predicted = [{"box": p["box"], "class": p["class"]} for p in item.predictions]
    if action == "correct":
        if correction is None:
            raise FieldError("boxes", "a correction needs the list of boxes")
        labels = check_correction(item, correction, palette)
        if _same_boxes(labels, predicted):  # saved without a change: the model was right
            action, labels = "approve", predicted
    elif correction is not None:
        raise FieldError("boxes", f"'{action}' takes no boxes")
    else:
        labels = predicted if action == "approve" else []

    before = state(item)
    if amend:
        seconds, reviewed_at = item.review_seconds, item.reviewed_at
    else:
        held = item.claimed_by == reviewer.id and item.claimed_at is not None
        seconds, reviewed_at = (round(now - item.claimed_at, 3) if held else None), now
    item.status, item.decision, item.labels = DONE, DECISION_OF[action], labels
    item.reviewed_by, item.reviewed_at, item.review_seconds = reviewer.id, reviewed_at, seconds
    item.claimed_by, item.claimed_at = None, None
    s.add(Audit(at=now, reviewer_id=reviewer.id, actor=reviewer.username, item_id=item.id, action=action,
                detail={"before": before, "after": state(item), "amend": amend}))
    return item, amend


def undo(s: Session, reviewer: Reviewer, now: float) -> Item:
    """Undo the reviewer's latest decision that is not undone yet."""
    entry = s.scalar(
        select(Audit).where(Audit.reviewer_id == reviewer.id, Audit.action.in_(DECISION_ACTIONS),
                            Audit.undone.is_(False))
        .order_by(Audit.id.desc()).limit(1).with_for_update())
    if entry is None:
        raise NotFound("nothing to undo")
    item = get_item(s, entry.item_id, lock=True)
    current = state(item)
    if current != entry.detail["after"]:
        raise Conflict(f"item {item.id!r} changed since that decision; it cannot be undone")
    restored = entry.detail["before"]
    for k in STATE_FIELDS:
        setattr(item, k, restored[k])
    if item.status == PENDING:
        release_mine(s, reviewer, "undo", now, keep=item.id)
        item.claimed_by, item.claimed_at = reviewer.id, now
    entry.undone = True
    s.add(Audit(at=now, reviewer_id=reviewer.id, actor=reviewer.username, item_id=item.id, action="undo",
                detail={"undid": entry.id, "before": current, "after": state(item)}))
    return item
