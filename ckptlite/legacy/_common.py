"""What every legacy reader yields, and the helpers they share."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import codec
from ..errors import LegacyFormatError, PickleNotAllowedError, UnsupportedTypeError
from ..types import Level, Status
from .unpickler import load_pickle

__all__ = [
    "FORMATS",
    "LegacyCheckpoint",
    "LegacyState",
    "ReadFailure",
    "digest_bytes",
    "from_epoch",
    "from_iso",
    "identity",
    "import_id",
    "jsonable",
    "keep_or_raw",
    "map_level",
    "read_bytes",
    "sort_parents_first",
    "unpickle",
]

#: Format names, in the order ``migrate`` reports them.
FORMATS = ("core", "processor", "pipeline", "script", "tile", "postgres")

_LEVELS = {
    "pipeline": Level.PIPELINE,
    "phase": Level.STAGE,  # the legacy manager's "phase" is ckptlite's STAGE
    "stage": Level.STAGE,
    "step": Level.STEP,
    "substep": Level.SUBSTEP,
}


@dataclass(frozen=True, slots=True)
class LegacyState:
    """A loaded legacy payload: the state, and facts for the new checkpoint's metadata.

    ``corrupted`` holds the reason when the legacy checksum did not match: the
    checkpoint is still imported, as CORRUPTED.
    """

    state: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    corrupted: str | None = None
    status: Status | None = None  # overrides the record's status (data missing: ARCHIVED)


@dataclass(frozen=True, slots=True)
class LegacyCheckpoint:
    """One legacy checkpoint as a reader found it; ``load`` reads its payload.

    ``identity`` is what makes it *this* checkpoint: its legacy id and the digest
    of its source bytes (never its path or the format it was reached as). It
    decides the ckptlite id and is kept as ``metadata["legacy_key"]``, so reaching
    it again, by any path, finds it. ``order`` is the time the legacy system's own
    "latest" ranked it by (epoch seconds).
    """

    format: str
    legacy_id: str
    source: str
    process_id: str
    level: Level
    name: str
    created_at: datetime
    identity: str
    load: Callable[[], LegacyState]
    metadata: dict[str, Any] = field(default_factory=dict)
    status: Status = Status.VALID
    legacy_parent: str | None = None  # identity of the legacy parent, when it has one
    progress: tuple[int, int] | None = None
    items: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] | None = None  # group: (done, failed)
    order: float | None = None  # None: created_at

    @property
    def order_key(self) -> float:
        return self.created_at.timestamp() if self.order is None else self.order

    @property
    def checkpoint_id(self) -> str:
        return import_id(self.level, self.created_at, self.identity)


def identity(legacy_id: str, digest: str) -> str:
    """Return the identity of a legacy checkpoint: its legacy id and the digest of its bytes."""
    return f"{legacy_id}\0{digest}"


def digest_bytes(data: bytes) -> str:
    """Return the sha256 hex digest of a source's bytes."""
    return hashlib.sha256(data).hexdigest()


def import_id(level: Level, created_at: datetime, identity: str) -> str:
    """Return the ckptlite id an imported checkpoint gets: same input, same id.

    It has the shape of ``generate_checkpoint_id`` (so ``parse_checkpoint_id``
    recovers the level and the legacy time); its random part is a hash of the
    legacy identity, which makes a rerun find what an earlier run imported.
    """
    when = created_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%f")
    token = hashlib.sha256(identity.encode()).hexdigest()[:32]
    return f"chk_{level.value}_{when}Z_{token}"


def map_level(level: Any) -> tuple[Level, dict[str, Any]]:
    """Map a legacy level string; unknown ones become STEP with the original kept.

    >>> map_level("phase")
    (<Level.STAGE: 'stage'>, {'legacy_level': 'phase'})
    >>> map_level("test")[0]
    <Level.STEP: 'step'>
    """
    mapped = _LEVELS.get(str(level).lower()) if isinstance(level, str) else None
    return (mapped or Level.STEP), {"legacy_level": level if isinstance(level, str) else str(level)}


def from_epoch(ts: Any) -> datetime:
    """Return the aware UTC time of an epoch float (the legacy ``time.time()``).

    Raises:
        LegacyFormatError: not a number.
    """
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise LegacyFormatError(f"timestamp {ts!r} is not an epoch number")
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (ValueError, OverflowError, OSError) as e:  # NaN, out of range
        raise LegacyFormatError(f"timestamp {ts!r} is not a usable time: {e}") from e


def from_iso(text: Any) -> datetime:
    """Return the aware time of an ISO timestamp; naive ones are taken as local time.

    The legacy pipeline wrote ``datetime.now().isoformat()``: local wall time
    without an offset, so it is read in the migrating machine's time zone.

    Raises:
        LegacyFormatError: not an ISO timestamp.
    """
    if not isinstance(text, str):
        raise LegacyFormatError(f"timestamp {text!r} is not an ISO string")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as e:
        raise LegacyFormatError(f"timestamp {text!r} is not ISO 8601") from e
    return dt.astimezone(UTC)  # a naive datetime is taken as local time here


def read_bytes(path: Path) -> bytes:
    """Read a file without following a symlink at its last component.

    Raises:
        LegacyFormatError: unreadable.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise LegacyFormatError(f"cannot read {path}: {e.strerror or e}", path=str(path)) from e
    with os.fdopen(fd, "rb") as f:
        return f.read()


def unpickle(data: bytes, trust_pickle: bool, what: str) -> tuple[Any, tuple[str, ...]]:
    """Load a legacy pickle with the restricted unpickler, if the caller opted in.

    Raises:
        PickleNotAllowedError: ``trust_pickle`` is False.
        UnsafePickleError: a class outside the allow-list.
        LegacyFormatError: not a readable pickle.
    """
    if not trust_pickle:
        raise PickleNotAllowedError(
            f"{what} is a pickle: reading it needs --trust-pickle (trust_pickle=True)",
            hint="Rerun with --trust-pickle (trust_pickle=True) if you trust whoever wrote "
            "these files; a restricted unpickler is used even then.",
        )
    loaded = load_pickle(data)
    return loaded.value, loaded.project_classes


def keep_or_raw(
    key: str, value: Any, raw: bytes, flags: dict[str, Any], encoding: str = "pickle"
) -> Any:
    """Return ``value`` if the codec can store it, else ``raw`` (its original bytes), flagged.

    ``flags[key]`` records the encoding of ``raw`` and why, so nothing is lost.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            codec.encode(value)
        lost = [str(w.message) for w in caught if "metadata on a dtype" in str(w.message)]
        for w in caught:  # any other warning goes on as it came
            if "metadata on a dtype" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if lost:  # the codec would drop the dtype's metadata: keep the original bytes
            flags[key] = {
                "encoding": encoding,
                "type": _type_name(value),
                "reason": "holds a numpy dtype with metadata, which the codec does not store",
            }
            return raw
    except UnsupportedTypeError as e:
        flags[key] = {"encoding": encoding, "type": _type_name(value), "reason": e.message}
        return raw
    except RecursionError:
        flags[key] = {
            "encoding": encoding,
            "type": _type_name(value),
            "reason": "nested too deeply",
        }
        return raw
    return value


def _type_name(value: Any) -> str:
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


def jsonable(value: Any) -> Any:
    """Return ``value`` as JSON-safe data for metadata (datetimes as ISO, others as str)."""
    # NaN and infinities (which json.dump wrote by default) become strings: metadata is strict JSON.
    return json.loads(json.dumps(value, default=_json_default), parse_constant=str)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def sort_parents_first(cps: Iterable[LegacyCheckpoint]) -> list[LegacyCheckpoint]:
    """Keep the readers' order (the legacy notion of newest comes last), parents first."""
    ordered = list(cps)
    by_identity = {c.identity: c for c in ordered}
    out: list[LegacyCheckpoint] = []
    placed: set[str] = set()
    for cp in ordered:
        chain: list[LegacyCheckpoint] = []
        in_chain: set[str] = set()
        node: LegacyCheckpoint | None = cp
        while node is not None and node.identity not in placed:
            if node.identity in in_chain:
                break  # a parent cycle: place what we have
            chain.append(node)
            in_chain.add(node.identity)
            node = by_identity.get(node.legacy_parent) if node.legacy_parent else None
        for c in reversed(chain):
            placed.add(c.identity)
            out.append(c)
    return out


@dataclass(frozen=True, slots=True)
class ReadFailure:
    """A legacy checkpoint a reader found but could not turn into a record."""

    format: str
    legacy_id: str
    source: str
    reason: str
