"""The queue: who holds which item, what comes next, what a reviewer did before.

A pending item is held by at most one reviewer (its claim); a reviewer holds at most one item.
Claims older than the TTL are abandoned: they are released (and audited) before the next claim.
Claiming is atomic: on PostgreSQL the candidate row is locked with SELECT ... FOR UPDATE SKIP
LOCKED, so concurrent reviewers each get a different row without waiting; on SQLite write
transactions are serialised (BEGIN IMMEDIATE) and the claim is a conditional
UPDATE ... WHERE claimed_by IS NULL whose row count says who won.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from fleet.review.errors import Conflict, NotFound
from fleet.review.models import Audit, Item, ItemClass, Reviewer

PENDING, DONE = "pending", "done"


@dataclass(frozen=True)
class Filters:
    reason: str | None = None
    site: str | None = None
    camera: str | None = None
    device: str | None = None
    model: str | None = None
    cls: str | None = None  # "class" in URLs

    @classmethod
    def from_mapping(cls, m) -> Filters:
        def get(key: str) -> str | None:
            v = (m.get(key) or "").strip()
            return v[:160] or None

        return cls(reason=get("reason"), site=get("site"), camera=get("camera"), device=get("device"),
                   model=get("model"), cls=get("class"))

    def as_params(self) -> dict[str, str]:
        return {("class" if k == "cls" else k): v for k, v in asdict(self).items() if v}

    def clauses(self) -> list:
        out = [getattr(Item, f.name) == getattr(self, f.name) for f in fields(self)
               if f.name != "cls" and getattr(self, f.name)]
        if self.cls:
            out.append(exists().where(ItemClass.item_id == Item.id, ItemClass.class_name == self.cls))
        return out

    def matches(self, item: Item) -> bool:
        plain = all(getattr(item, f.name) == getattr(self, f.name) for f in fields(self)
                    if f.name != "cls" and getattr(self, f.name))
        return plain and (not self.cls or self.cls in (item.classes or []))


def _release(s: Session, item: Item, cause: str, now: float, actor: str) -> None:
    s.add(Audit(at=now, reviewer_id=item.claimed_by, actor=actor, item_id=item.id, action="release",
                detail={"cause": cause, "claimed_at": item.claimed_at}))
    item.claimed_by, item.claimed_at = None, None


def release_expired(s: Session, postgres: bool, now: float, ttl_s: float) -> list[str]:
    """Release claims untouched for `ttl_s` (abandoned tabs, closed laptops). Returns the released ids."""
    q = select(Item).where(Item.status == PENDING, Item.claimed_at < now - ttl_s)
    if postgres:
        q = q.with_for_update(skip_locked=True)  # a row another claimer holds is theirs to decide about
    released = s.scalars(q).all()
    for item in released:
        _release(s, item, "expired", now, "system")
    return [i.id for i in released]


def held(s: Session, reviewer: Reviewer) -> list[Item]:
    """The items the reviewer holds (claimed_by is cleared by every decision, so these are pending)."""
    return [i for i in s.scalars(select(Item).where(Item.claimed_by == reviewer.id)) if i.status == PENDING]


def release_mine(s: Session, reviewer: Reviewer, cause: str, now: float, keep: str | None = None) -> None:
    for item in held(s, reviewer):
        if item.id != keep:
            _release(s, item, cause, now, reviewer.username)


def claim_next(s: Session, postgres: bool, reviewer: Reviewer, filters: Filters, now: float,
               ttl_s: float) -> Item | None:
    """The reviewer's current item if it matches the filters, else the next free one (claimed), else None."""
    release_expired(s, postgres, now, ttl_s)
    mine = held(s, reviewer)
    for item in mine:
        if filters.matches(item):
            release_mine(s, reviewer, "switched", now, keep=item.id)
            return item
    for item in mine:
        _release(s, item, "filters", now, reviewer.username)

    skipped = select(Audit.item_id).where(
        Audit.reviewer_id == reviewer.id, Audit.action == "skip", Audit.at >= now - ttl_s, Audit.item_id.is_not(None))
    q = (select(Item.id)
         .where(Item.status == PENDING, Item.claimed_by.is_(None), Item.id.not_in(skipped), *filters.clauses())
         .order_by(Item.priority, Item.created_at, Item.id).limit(1))
    if postgres:
        q = q.with_for_update(of=Item, skip_locked=True)
    for _attempt in range(5):
        item_id = s.scalar(q)
        if item_id is None:
            return None
        won = s.execute(
            update(Item)
            .where(Item.id == item_id, Item.status == PENDING, Item.claimed_by.is_(None))
            .values(claimed_by=reviewer.id, claimed_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if won == 1:
            return s.get(Item, item_id, populate_existing=True)
    return None


def get_item(s: Session, item_id: str, lock: bool = False) -> Item:
    item = s.get(Item, item_id, with_for_update=lock or None, populate_existing=lock)
    if item is None:
        raise NotFound(f"item {item_id!r} not found")
    return item


def claim(s: Session, item_id: str, reviewer: Reviewer, now: float, ttl_s: float) -> Item:
    """Open one item (picked from the queue page): claims it if pending and free; a done item is only read."""
    item = get_item(s, item_id, lock=True)
    if item.status != PENDING or item.claimed_by == reviewer.id:
        return item
    if item.claimed_by is not None:
        if item.claimed_at is not None and item.claimed_at >= now - ttl_s:
            holder = s.get(Reviewer, item.claimed_by)
            raise Conflict(f"item {item_id!r} is claimed by {holder.username if holder else item.claimed_by}")
        _release(s, item, "expired", now, "system")
    release_mine(s, reviewer, "switched", now)
    item.claimed_by, item.claimed_at = reviewer.id, now
    return item


def skip(s: Session, item_id: str, reviewer: Reviewer, now: float) -> Item:
    """Give the item back to the queue; the reviewer is not offered it again for a claim TTL."""
    item = get_item(s, item_id, lock=True)
    if item.status != PENDING:
        raise Conflict(f"item {item_id!r} is already reviewed")
    if item.claimed_by not in (None, reviewer.id):
        raise Conflict(f"item {item_id!r} is claimed by another reviewer")
    s.add(Audit(at=now, reviewer_id=reviewer.id, actor=reviewer.username, item_id=item.id, action="skip",
                detail={"claimed_at": item.claimed_at}))
    item.claimed_by, item.claimed_at = None, None
    return item


def neighbours(s: Session, reviewer: Reviewer, item: Item | None) -> tuple[str | None, str | None]:
    """(previous, next) item ids in the reviewer's own history, ordered by decision time.

    For a pending item (or none) the previous one is the reviewer's latest decision and there is no next.
    """
    mine = and_(Item.reviewed_by == reviewer.id, Item.status == DONE)
    if item is not None and item.status == DONE and item.reviewed_by == reviewer.id:
        t = item.reviewed_at
        before = or_(Item.reviewed_at < t, and_(Item.reviewed_at == t, Item.id < item.id))
        after = or_(Item.reviewed_at > t, and_(Item.reviewed_at == t, Item.id > item.id))
        prev_id = s.scalar(select(Item.id).where(mine, before)
                           .order_by(Item.reviewed_at.desc(), Item.id.desc()).limit(1))
        next_id = s.scalar(select(Item.id).where(mine, after).order_by(Item.reviewed_at, Item.id).limit(1))
        return prev_id, next_id
    prev_id = s.scalar(select(Item.id).where(mine).order_by(Item.reviewed_at.desc(), Item.id.desc()).limit(1))
    return prev_id, None


def list_items(s: Session, filters: Filters, status: str, offset: int, limit: int) -> tuple[list[Item], int]:
    where = [*filters.clauses()]
    if status in (PENDING, DONE):
        where.append(Item.status == status)
    order = (Item.priority, Item.created_at, Item.id) if status == PENDING else (Item.created_at.desc(), Item.id.desc())
    rows = s.scalars(select(Item).where(*where).order_by(*order).offset(offset).limit(limit)).all()
    total = s.scalar(select(func.count()).select_from(Item).where(*where))
    return list(rows), int(total or 0)


def facets(s: Session, status: str) -> dict[str, list[tuple[str, int]]]:
    """Values and counts for the queue page's filter menus (one pass over the items, one over their classes)."""
    where = [Item.status == status] if status in (PENDING, DONE) else []
    names = ("reason", "site", "camera", "model")  # the order of ix_items_facets: an index-only scan
    cols = [getattr(Item, n) for n in names]
    counts: dict[str, dict[str, int]] = {n: {} for n in names}
    for *values, n in s.execute(select(*cols, func.count()).where(*where).group_by(*cols)):
        for name, value in zip(names, values, strict=True):
            counts[name][value] = counts[name].get(value, 0) + n
    out = {name: sorted(c.items())[:200] for name, c in counts.items()}
    out["class"] = [(v, n) for v, n in s.execute(
        select(ItemClass.class_name, func.count()).join(Item, Item.id == ItemClass.item_id).where(*where)
        .group_by(ItemClass.class_name).order_by(ItemClass.class_name).limit(200))]
    return out


def usernames(s: Session) -> dict[int, str]:
    return dict(s.execute(select(Reviewer.id, Reviewer.username)).all())
