"""Walk a folder tree and classify every folder and file: a legacy format, or not legacy.

What a thing is comes from what it holds, never from how deep it sits: a
``checkpoint_<stage>.json`` is the pipeline manager's when its document names an
``experiment_id`` and the script variant's when it holds ``stage`` and ``data``;
a folder with ``registry.json`` is a core-manager directory, and so is the
parent of every folder whose ``metadata.json`` is a core record; any other file
is a tile checkpoint when it is a pickled ``ProcessingCheckpoint``. Symlinks are
reported, never followed. Folders holding nothing legacy are reported once,
as a whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LegacyFormatError
from . import script, tile
from .pipeline import read_doc, read_json

__all__ = ["Plan", "classify_doc", "walk"]

_CORE_RECORD_KEYS = frozenset({"checkpoint_id", "timestamp", "data_files"})


@dataclass(slots=True)
class Plan:
    """What a walk found: readers' inputs, and what is not theirs (with why)."""

    core_roots: dict[Path, list[Path]] = field(default_factory=dict)  # root -> metadata.json
    pipeline: list[Path] = field(default_factory=list)
    script: list[Path] = field(default_factory=list)
    tile: list[Path] = field(default_factory=list)
    failed: list[tuple[str, Path, str]] = field(default_factory=list)  # (format, path, why)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    not_legacy: list[tuple[Path, str]] = field(default_factory=list)
    docs: dict[Path, tuple[Any, str]] = field(default_factory=dict)  # JSON read while walking

    @property
    def formats(self) -> tuple[str, ...]:
        """Return the formats met, in report order (``processor`` is told apart later)."""
        found = [
            name
            for name, hit in (
                ("core", self.core_roots),
                ("pipeline", self.pipeline),
                ("script", self.script),
                ("tile", self.tile),
            )
            if hit
        ]
        found += [f for f, _p, _w in self.failed if f not in found]
        return tuple(found)

    @property
    def empty(self) -> bool:
        """True when nothing legacy (not even a failed or skipped one) was found."""
        return not (
            self.core_roots
            or self.pipeline
            or self.script
            or self.tile
            or self.failed
            or self.skipped
        )


def classify_doc(doc: Any) -> tuple[str | None, str]:
    """Return ``(format, why)`` for a ``checkpoint_*.json`` document: pipeline, script, or None."""
    if isinstance(doc, dict) and "experiment_id" in doc:
        return "pipeline", ""
    if script.is_script_doc(doc):
        return "script", ""
    return None, "a checkpoint_*.json holding neither a pipeline nor a script document"


def _core_record(meta_path: Path) -> dict[str, Any] | None:
    try:
        rec = read_json(meta_path)
    except LegacyFormatError:
        return None
    return rec if isinstance(rec, dict) else None


def _is_core_dir(d: Path, files: list[str]) -> bool:
    rec = _core_record(d / "metadata.json")
    if rec is not None:
        return bool(_CORE_RECORD_KEYS & rec.keys())
    # An unreadable metadata.json next to pickles is a damaged core record: the reader reports it.
    return any(f.endswith((".pkl", ".pkl.gz")) for f in files)


def _core_root(d: Path, registries: list[Path]) -> Path:
    """The core-manager directory a checkpoint folder belongs to (ids may hold '/')."""
    for reg in sorted(registries, key=lambda p: len(p.parts), reverse=True):
        if d.is_relative_to(reg) and d != reg:
            return reg
    rec = _core_record(d / "metadata.json")
    cid = rec.get("checkpoint_id") if rec else None
    if isinstance(cid, str) and cid and d.as_posix().endswith("/" + cid.strip("/")):
        return Path(d.as_posix()[: -len(cid.strip("/")) - 1])
    return d.parent


def _classify_file(p: Path, plan: Plan) -> bool:
    """Put a file into ``plan``; return True when it is legacy (or a failed legacy one)."""
    name = p.name
    if name.startswith("checkpoint_") and name.endswith(".json"):
        try:
            parsed = read_doc(p)  # kept: the reader uses it instead of reading it again
        except LegacyFormatError as e:
            plan.failed.append(("pipeline", p, f"{type(e).__name__}: {e.message}"))
            return True
        fmt, why = classify_doc(parsed[0])
        if fmt is not None:
            plan.docs[p] = parsed
        if fmt == "pipeline":
            plan.pipeline.append(p)
        elif fmt == "script":
            plan.script.append(p)
        else:
            plan.not_legacy.append((p, why))
            return False
        return True
    if name.startswith("checkpoint_") and name.endswith(".tmp"):
        plan.not_legacy.append((p, "an unfinished pipeline save (the legacy loader never read it)"))
        return False
    if tile.sniff(p):
        plan.tile.append(p)
        return True
    plan.not_legacy.append((p, ""))
    return False


def walk(root: Path) -> Plan:
    """Classify everything under ``root`` (a folder or one file).

    Raises:
        LegacyFormatError: ``root`` does not exist.
    """
    plan = Plan()
    if not root.exists() and not root.is_symlink():
        raise LegacyFormatError(f"{root} does not exist", path=str(root))
    if root.is_file() and root.name == "registry.json":  # the core-manager folder it indexes
        metas = [m for m in sorted(root.parent.rglob("metadata.json")) if m.parent != root.parent]
        plan.core_roots[root.parent] = metas
        return plan
    if root.is_file():
        if not _classify_file(root, plan):
            plan.not_legacy.clear()
        return plan
    registries: list[Path] = []
    core_dirs: list[Path] = []
    legacy_dirs: set[Path] = set()  # folders holding something legacy, at any depth
    loose: dict[Path, list[tuple[Path, str]]] = {}  # folder -> its non-legacy entries

    def mark(d: Path) -> None:
        while d not in legacy_dirs:
            legacy_dirs.add(d)
            if d == root:
                break
            d = d.parent

    def unreadable(e: OSError) -> None:
        p = Path(e.filename) if e.filename else root
        plan.skipped.append((p, f"cannot read this folder: {e.strerror or e}"))
        mark(p.parent if p != root else root)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        d = Path(dirpath)
        own: list[tuple[Path, str]] = []
        for name in sorted(dirnames):
            sub = d / name
            if sub.is_symlink():
                dirnames.remove(name)
                plan.skipped.append((sub, "a symlink: not followed (migrate its target instead)"))
                mark(d)
        dirnames.sort()
        files = sorted(filenames)
        if "registry.json" in files:
            registries.append(d)
            plan.core_roots.setdefault(d, [])
            mark(d)
            files.remove("registry.json")
        if "metadata.json" in files and _is_core_dir(d, files):
            core_dirs.append(d)
            mark(d)
            continue  # its files are the checkpoint's; nested ids are folders below
        for name in files:
            p = d / name
            if p.is_symlink():
                if p.is_file() and _looks_legacy(p):
                    plan.skipped.append((p, "a symlink: not followed (migrate its target)"))
                    mark(d)
                else:
                    own.append((p, "a symlink"))
                continue
            before = len(plan.not_legacy)
            if _classify_file(p, plan):
                mark(d)
            elif len(plan.not_legacy) > before:
                own.append(plan.not_legacy.pop())
        loose[d] = own
    for cd in core_dirs:
        plan.core_roots.setdefault(_core_root(cd, registries), []).append(cd / "metadata.json")
    # Report non-legacy things: a folder with nothing legacy below it once, as a whole.
    for d, own in sorted(loose.items()):
        if d in legacy_dirs:
            plan.not_legacy.extend(own)
            continue
        if d == root or d.parent in legacy_dirs:
            plan.not_legacy.append((d, "a folder holding no legacy checkpoint"))
    return plan


def _looks_legacy(p: Path) -> bool:
    scratch = Plan()
    try:
        return _classify_file(p, scratch)
    except OSError:
        return False
