"""What every document reader shares: `Doc`, field checks bound to one YAML document that report
problems (file, line, field) instead of raising, so all errors surface together; and the small value
parsers more than one kind uses."""
from __future__ import annotations

import ipaddress
from typing import Any, Callable

from .errors import Problems
from .values import normalise_host, parse_duration
from .yamlsrc import Node


class Doc:
    """Helpers bound to one document for field checks with line numbers."""

    def __init__(self, root: Node, problems: Problems):
        self.root, self.problems = root, problems

    def error(self, node: Node, message: str) -> None:
        self.problems.add(node.file, node.line, node.path, message)

    def fields(self, node: Node | None, allowed: set[str], required: set[str] = frozenset()) -> bool:
        if node is None:
            return False
        if node.kind != "map":
            self.error(node, "expected a mapping")
            return False
        for key, child in node.children.items():
            if key not in allowed:
                self.error(child, f"unknown field (allowed: {', '.join(sorted(allowed))})")
        for key in sorted(required - set(node.children)):
            self.error(node, f"missing required field {node.child_path(key)!r}")
        return True

    def value(self, node: Node | None, key: str, parse: Callable[[Any], Any], default: Any = None) -> Any:
        child = node.get(key) if node is not None and node.kind == "map" else None
        if child is None:
            return default
        try:
            return parse(child.value)
        except ValueError as exc:
            self.error(child, str(exc))
            return default

    def string(self, node: Node | None, key: str, default: str | None = None) -> str | None:
        def check(v: Any) -> str:
            if not isinstance(v, str) or not v:
                raise ValueError(f"expected a non-empty string, got {v!r}")
            return v
        return self.value(node, key, check, default)

    def seq(self, node: Node | None, key: str) -> list[Node]:
        child = node.get(key) if node is not None and node.kind == "map" else None
        if child is None:
            return []
        if child.kind != "seq":
            self.error(child, "expected a list")
            return []
        return child.items

    def name(self) -> str:
        meta = self.root.get("metadata")
        if self.fields(meta, {"name", "namespace", "labels", "annotations", "uid", "resourceVersion",
                              "generation", "creationTimestamp", "managedFields"}, {"name"}):
            return self.string(meta, "name", "") or ""
        if meta is None:
            self.error(self.root, "missing required field 'metadata.name'")
        return ""


def parse_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def parse_path(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/"):
        raise ValueError(f"path must start with '/', got {v!r}")
    return v


REDIRECT_CODES = (301, 302, 303, 307, 308)


def parse_port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
        raise ValueError(f"port must be 1..65535, got {v!r}")
    return v


def redirect_code(v: Any) -> int:
    if v not in REDIRECT_CODES or isinstance(v, bool):
        raise ValueError(f"statusCode must be one of {', '.join(map(str, REDIRECT_CODES))}, got {v!r}")
    return v


def one_of(what: str | None, *allowed: str) -> Callable[[Any], str]:
    """A parser accepting exactly one of `allowed` ("WHAT must be a or b", or "expected a or b")."""
    lead = f"{what} must be" if what else "expected"

    def parse(v: Any) -> str:
        if v not in allowed:
            raise ValueError(f"{lead} {', '.join(allowed[:-1])} or {allowed[-1]}, got {v!r}")
        return v
    return parse


def parse_percent(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
        raise ValueError(f"percent must be a number 0..100, got {v!r}")
    return float(v)


def positive_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"expected a positive integer, got {v!r}")
    return v


def positive_duration(v: Any) -> float:
    d = parse_duration(v)
    if d <= 0:
        raise ValueError(f"duration must be positive, got {v!r}")
    return d


def read_list(doc: Doc, node: Node | None, key: str, parse: Callable[[Any], Any], max_items: int = 64) -> tuple:
    """The distinct values of a list field, each parsed (a ValueError is reported at its item's line)."""
    items = doc.seq(node, key)
    if len(items) > max_items:
        doc.error(node.get(key), f"at most {max_items} entries, got {len(items)}")
        return ()
    out: list = []
    for item in items:
        try:
            value = parse(item.value)
        except ValueError as exc:
            doc.error(item, str(exc))
            continue
        if value not in out:
            out.append(value)
    return tuple(out)


def read_cidrs(doc: Doc, nodes: list[Node]) -> tuple:
    """The networks of a list of CIDRs (trustedProxies, sourceRanges); a bad one is reported at its line."""
    out = []
    for item in nodes:
        try:
            out.append(ipaddress.ip_network(str(item.value), strict=False))
        except ValueError:
            doc.error(item, f"not a CIDR: {item.value!r}")
    return tuple(out)


def read_hosts(doc: Doc, nodes: list[Node]) -> tuple[str, ...]:
    """The Host names of a `hosts` list, normalised; a bad one is reported at its line."""
    out = []
    for item in nodes:
        try:
            out.append(normalise_host(item.value))
        except ValueError as exc:
            doc.error(item, str(exc))
    return tuple(out)
