"""Compare-and-set over registry records, and expiring leases: the pure decisions, no store and no Ray.

Every registry record carries a ``revision`` (an int; a record written before revisions existed loads as 0).
A write names the revision it read and is refused when the stored record moved on, so two management
replicas that read the same record cannot both write over it and lose one of the changes:

* :func:`decide_create`: write only where nothing is stored (a register); else ``exists`` with what is stored.
* :func:`decide_replace`: write only over the revision the writer read (a scale, set-default, a pool); else
  ``conflict`` with the current record (the writer re-reads, re-applies its change and tries again), or
  ``missing`` when the record went (a scale racing an unregister: 404, nothing recreated).
* :func:`decide_delete`: delete only the revision the writer read, or any when it names none.

``modelpool.management.registry_writer`` runs these inside one actor, which reads the stored record, decides and
writes, one call at a time: that is what makes each decision atomic.

:class:`LeaseTable` is the arithmetic of named, expiring leases (owner, deadline): held by one owner at a time,
renewed by its holder, free again at its deadline so a management replica killed while it held one blocks the
others for at most the lease's time to live.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

CREATED = "created"
EXISTS = "exists"
OK = "ok"
CONFLICT = "conflict"
MISSING = "missing"
DELETED = "deleted"
TAKEN = "taken"  # the name belongs to the other kind (a graph's name for a model, a model's for a graph)


def revision_of(record: Optional[dict]) -> int:
    """A stored record's revision; 0 for one written before revisions existed (and for garbage)."""
    if not record:
        return 0
    value = record.get("revision", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass(frozen=True)
class Outcome:
    """What a compare-and-set did. ``record``: what is stored now (the one written, or on a refusal the one
    that won); ``None`` when nothing is (``missing``, ``deleted``)."""

    status: str
    record: Optional[dict] = None
    #: set by the writer when the call wrote (created, ok, deleted): what to store, or None to delete
    write: bool = False

    @property
    def ok(self) -> bool:
        return self.status in (CREATED, OK, DELETED)

    @property
    def revision(self) -> int:
        return revision_of(self.record)


def decide_create(stored: Optional[dict], new: dict) -> Outcome:
    """Create ``new`` at revision 1 where nothing is stored; else ``exists`` with the stored record."""
    if stored is not None:
        return Outcome(EXISTS, stored)
    return Outcome(CREATED, {**new, "revision": 1}, write=True)


def decide_replace(stored: Optional[dict], expected_revision: int, new: dict) -> Outcome:
    """Replace the stored record with ``new`` at the next revision when it is still ``expected_revision``."""
    if stored is None:
        return Outcome(MISSING)
    current = revision_of(stored)
    if current != expected_revision:
        return Outcome(CONFLICT, stored)
    return Outcome(OK, {**new, "revision": current + 1}, write=True)


def decide_put(stored: Optional[dict], expected_revision: Optional[int], new: dict) -> Outcome:
    """Create or replace: ``expected_revision`` None writes whatever is there (one step after it), 0 means
    "only where nothing is stored or a record without revision", n means "only over revision n"."""
    if expected_revision is not None and stored is not None and revision_of(stored) != expected_revision:
        return Outcome(CONFLICT, stored)
    if expected_revision not in (None, 0) and stored is None:
        return Outcome(MISSING)
    status = OK if stored is not None else CREATED
    return Outcome(status, {**new, "revision": revision_of(stored) + 1}, write=True)


def decide_delete(stored: Optional[dict], expected_revision: Optional[int] = None) -> Outcome:
    """Delete the stored record if it is still ``expected_revision`` (any revision when None)."""
    if stored is None:
        return Outcome(MISSING)
    if expected_revision is not None and revision_of(stored) != expected_revision:
        return Outcome(CONFLICT, stored)
    return Outcome(DELETED, None, write=True)


# ------------------------------------------------------------------------------------------ leases
@dataclass
class Lease:
    owner: str
    expires: float


@dataclass
class LeaseTable:
    """Named leases with a deadline; ``clock`` is monotonic seconds (injectable for tests)."""

    clock: Callable[[], float] = time.monotonic
    leases: dict[str, Lease] = field(default_factory=dict)

    def acquire(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take ``name`` for ``ttl_s`` seconds if it is free, expired, or already ``owner``'s (then renewed)."""
        now = self.clock()
        held = self.leases.get(name)
        if held is not None and held.owner != owner and held.expires > now:
            return False
        self.leases[name] = Lease(owner, now + ttl_s)
        return True

    def renew(self, name: str, owner: str, ttl_s: float) -> bool:
        """Extend ``owner``'s lease (even a lapsed one nobody took since); False when someone else holds it now:
        the holder lost it and must not act as if it still held it."""
        held = self.leases.get(name)
        if held is not None and held.owner != owner:
            return False
        self.leases[name] = Lease(owner, self.clock() + ttl_s)
        return True

    def release(self, name: str, owner: str) -> bool:
        """Give ``name`` back; a lease someone else took since (after this one expired) is left alone."""
        held = self.leases.get(name)
        if held is None or held.owner != owner:
            return False
        del self.leases[name]
        return True

    def holder(self, name: str) -> Optional[str]:
        held = self.leases.get(name)
        return held.owner if held is not None and held.expires > self.clock() else None

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        return {name: {"owner": lease.owner, "expiresInS": round(lease.expires - now, 3)}
                for name, lease in self.leases.items() if lease.expires > now}
