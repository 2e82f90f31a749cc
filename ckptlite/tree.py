"""The checkpoint hierarchy as a tree, built from parent ids (pure functions).

>>> from ckptlite.tree import build_tree, render_tree
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .types import Checkpoint
from .views import checkpoint_view

__all__ = ["TreeNode", "build_tree", "render_tree", "tree_view", "walk"]


@dataclass(frozen=True, slots=True)
class TreeNode:
    """A checkpoint and its children, oldest (lowest seq) first.

    ``detached`` is True for a root whose parent exists but is not among the
    checkpoints the tree was built from (e.g. filtered out by ``ls``).
    """

    checkpoint: Checkpoint
    children: tuple[TreeNode, ...] = ()
    detached: bool = False


def build_tree(checkpoints: Iterable[Checkpoint]) -> list[TreeNode]:
    """Return the roots of the forest the checkpoints' parent ids draw, oldest first.

    A checkpoint whose parent is not in ``checkpoints`` becomes a root (``detached``).

    >>> from datetime import UTC, datetime
    >>> from ckptlite import Checkpoint, Level, Status
    >>> def cp(i, parent=None):
    ...     return Checkpoint(i, "p", Level.STEP, i, parent, int(i[1:]), Status.VALID,
    ...                       datetime.now(UTC), 0, 0, "")
    >>> [n.checkpoint.id for n in build_tree([cp("c2", "c1"), cp("c1")])[0].children]
    ['c2']
    """
    by_id = {c.id: c for c in checkpoints}
    kids: dict[str, list[Checkpoint]] = {}
    roots: list[Checkpoint] = []
    for c in by_id.values():
        if c.parent_id is not None and c.parent_id in by_id and c.parent_id != c.id:
            kids.setdefault(c.parent_id, []).append(c)
        else:
            roots.append(c)

    def node(c: Checkpoint, seen: frozenset[str]) -> TreeNode:
        # ``seen`` guards against a parent cycle, which no backend should ever hold.
        below = sorted(kids.get(c.id, ()), key=lambda k: k.seq)
        return TreeNode(
            c,
            tuple(node(k, seen | {c.id}) for k in below if k.id not in seen),
            detached=c.parent_id is not None and c.parent_id not in by_id,
        )

    return [node(c, frozenset()) for c in sorted(roots, key=lambda r: r.seq)]


def walk(roots: Iterable[TreeNode]) -> Iterator[tuple[str, TreeNode]]:
    """Yield (prefix, node) depth-first; the prefix draws the branches (``├─ `` / ``└─ ``)."""

    def go(nodes: tuple[TreeNode, ...], indent: str) -> Iterator[tuple[str, TreeNode]]:
        for i, n in enumerate(nodes):
            last = i == len(nodes) - 1
            yield indent + ("└─ " if last else "├─ "), n
            yield from go(n.children, indent + ("   " if last else "│  "))

    for root in roots:
        yield "", root
        yield from go(root.children, "")


def render_tree(roots: Iterable[TreeNode], label: Callable[[Checkpoint], str]) -> list[str]:
    """Return one text line per checkpoint: branch prefix, then ``label(checkpoint)``."""
    return [prefix + label(node.checkpoint) for prefix, node in walk(roots)]


def tree_view(roots: Iterable[TreeNode]) -> list[dict[str, Any]]:
    """Return the tree as JSON-ready data (the ``ckptlite ls --tree --json`` schema).

    Each node: ``{"checkpoint": checkpoint_view, "detached": bool, "children": [...]}``.
    """

    def node(n: TreeNode) -> dict[str, Any]:
        return {
            "checkpoint": checkpoint_view(n.checkpoint),
            "detached": n.detached,
            "children": [node(c) for c in n.children],
        }

    return [node(r) for r in roots]
