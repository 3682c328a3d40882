"""Which receivers get an alert, and in which group: the route tree of `alerts.route`.

Alertmanager's semantics, with label globs as matchers (alerts.globs, as in rules: `!`
negates, a list is any of its plain globs and none of its `!` ones): an alert enters a
route that matches it, then tries the children in order; the first matching child takes
it, and the search goes on past a matching child only when that child says `continue`. A
route no child takes it from sends it to its own receiver; a route's receiver, `group_by`
and `group_wait_s` are its parent's unless it sets them (the root's defaults otherwise).
The group key is the route's place in the tree and the values of its
`group_by` labels, so two routes that group differently never share a message.

    >>> [t.receiver for t in route(Route(receiver="slack"), {"severity": "critical"})]   # doctest: +SKIP
    ['slack']

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from alerts.config import Route
from alerts.globs import label_matches

MAX_GROUP_KEY = 1000  # the column's length; longer keys end in a hash


@dataclass(frozen=True)
class Target:
    receiver: str
    group_key: str
    group_labels: Mapping[str, str]
    group_wait_s: float
    route_id: str


def matches(match: Mapping[str, Sequence[str]], labels: Mapping[str, str]) -> bool:
    return all(label_matches(str(labels.get(k, "")), pat) for k, pat in match.items())


def group_key(route_id: str, group_labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in group_labels.items())
    key = f"{route_id}:{{{inner}}}"
    if len(key) > MAX_GROUP_KEY:
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        key = key[: MAX_GROUP_KEY - 18] + "…" + digest
    return key


def route(tree: Route, labels: Mapping[str, str]) -> list[Target]:
    """The (receiver, group) pairs an alert with `labels` goes to; empty when none."""
    out: list[Target] = []
    if matches(tree.match, labels):
        _walk(tree, labels, _Inherited(None, tree.group_by, tree.group_wait_s), "root", out)
    seen: set[tuple[str, str]] = set()
    unique = []
    for t in out:  # two branches may name one receiver for one group: send once
        if (t.receiver, t.group_key) not in seen:
            seen.add((t.receiver, t.group_key))
            unique.append(t)
    return unique


@dataclass(frozen=True)
class _Inherited:
    receiver: str | None
    group_by: list[str]
    group_wait_s: float


def _walk(node: Route, labels: Mapping[str, str], parent: _Inherited, rid: str, out: list[Target]) -> None:
    # as Alertmanager's routes: what a child does not set is its parent's (a child with
    # only `match` and `receiver` groups and waits as the tree above it says)
    given = node.model_fields_set
    mine = _Inherited(node.receiver or parent.receiver,
                      node.group_by if "group_by" in given else parent.group_by,
                      node.group_wait_s if "group_wait_s" in given else parent.group_wait_s)
    taken = False
    for i, child in enumerate(node.routes):
        if not matches(child.match, labels):
            continue
        _walk(child, labels, mine, f"{rid}.{i}", out)
        taken = True
        if not child.continue_:
            break
    if not taken and mine.receiver is not None:
        group = {k: str(labels.get(k, "")) for k in mine.group_by}
        out.append(Target(mine.receiver, group_key(rid, group), group, mine.group_wait_s, rid))
