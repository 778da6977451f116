"""Ids that are never reused. Embedding ids are FAISS ids and name vectors that may outlive their
rows (a crash between the vector append and the SQL commit), so new ones start above every id
ever given: in SQL, in the vector stores, or recorded as a floor when vectors were dropped.
Item ids are given from a high-water mark kept with the counters, for the same reason."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from mmsearch.storage.models import Counter, Embedding, Meta

EMBEDDING_FLOOR = "id_floor"  # meta key: embedding ids up to here are used
ITEM_HIGH_WATER = "ids.items"  # counter key: the highest item id given


def embedding_floor(s: Session) -> int:
    meta = s.get(Meta, EMBEDDING_FLOOR)
    return int(meta.value) if meta else 0


def max_embedding_id(s: Session) -> int:
    """The highest embedding id SQL knows of, deleted ones included."""
    return max(int(s.scalar(select(func.max(Embedding.id))) or 0), embedding_floor(s))


def raise_embedding_floor(s: Session, value: int) -> None:
    if value > embedding_floor(s):
        meta = s.get(Meta, EMBEDDING_FLOOR)
        if meta is None:
            s.add(Meta(key=EMBEDDING_FLOOR, value=str(value)))
        else:
            meta.value = str(value)


def allocate_item_ids(s: Session, n: int) -> list[int]:
    """``n`` fresh item ids, inside the caller's transaction (one writer: no race)."""
    if n <= 0:
        return []
    current = s.scalar(select(Counter.value).where(Counter.key == ITEM_HIGH_WATER))
    if current is None:
        s.add(Counter(key=ITEM_HIGH_WATER, value=n))
        s.flush()
        return list(range(1, n + 1))
    s.execute(update(Counter).where(Counter.key == ITEM_HIGH_WATER).values(value=Counter.value + n))
    return list(range(int(current) + 1, int(current) + n + 1))
