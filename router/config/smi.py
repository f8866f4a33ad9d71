"""SMI HTTPRouteGroup (specs.smi-spec.io v1alpha1..v1alpha4) and the TrafficSplit `matches` that refer to
them: a split with matches takes only the requests one of its groups' matches describes (an A/B test on a
user segment); the rest go to the host's other routes, as SMI sends them to the root service.

A match is `pathRegex` (RE2, anchored at the start of the path: "/api" takes "/api/x"), `methods` (a list;
"*" or none: any) and `headers` (name: RE2 pattern the whole value matches; all must hold). Matches are
ORed, so a split becomes one route per match and method, each with the split's backends and options.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..core.regex import compile_pattern

from .doc import Doc
from .errors import Problems
from .model import RouteMatch
from .route_options import METHOD, TOKEN, parse_pattern
from .splits import PendingSplit
from .yamlsrc import Node

ANY_METHOD = "*"


@dataclass(frozen=True)
class GroupMatch:
    name: str
    path_regex: str | None  # anchored at the start only, as SMI says; made whole-path for the route
    methods: tuple[str, ...]  # () : any method
    headers: tuple[tuple[str, str], ...]  # (lowercase name, RE2 pattern of the whole value)


@dataclass(frozen=True)
class RouteGroup:
    name: str
    matches: tuple[GroupMatch, ...]
    node: Node


def read_route_group(doc: Doc, version: str) -> RouteGroup | None:
    """An HTTPRouteGroup: `spec.matches` (v1alpha1 kept them at the top level, and had no headers)."""
    name = doc.name()
    spec = doc.root.get("spec")
    if version == "v1alpha1" and spec is None:
        holder = doc.root
    elif not doc.fields(spec, {"matches"}, {"matches"}):
        if spec is None:
            doc.error(doc.root, "missing required field 'spec'")
        return None
    else:
        holder = spec
    matches, names = [], set()
    for m in doc.seq(holder, "matches"):
        allowed = {"name", "pathRegex", "methods"} | (set() if version == "v1alpha1" else {"headers"})
        if not doc.fields(m, allowed, {"name"}):
            continue
        match_name = doc.string(m, "name")
        if match_name in names:
            doc.error(m.get("name"), f"match {match_name!r} is named twice")
        names.add(match_name)
        pattern = doc.value(m, "pathRegex", parse_pattern)
        methods = tuple(dict.fromkeys(_read_methods(doc, m)))
        headers = _read_headers(doc, m.get("headers"))
        if not any(m.get(key) is not None for key in ("pathRegex", "methods", "headers")):
            doc.error(m, "a match needs pathRegex, methods or headers")
        elif match_name and (pattern is not None or methods or headers):  # (else an error was reported)
            matches.append(GroupMatch(match_name, pattern, () if ANY_METHOD in methods else methods, headers))
    if not matches and not doc.seq(holder, "matches"):
        doc.error(holder, "no matches")
    return RouteGroup(name, tuple(matches), doc.root) if name else None


def _read_methods(doc: Doc, m: Node) -> list[str]:
    out = []
    for item in doc.seq(m, "methods"):
        if item.value == ANY_METHOD:
            out.append(ANY_METHOD)
            continue
        try:
            out.append(METHOD(item.value))
        except ValueError as exc:
            doc.error(item, str(exc))
    return out


def _read_headers(doc: Doc, node: Node | None) -> tuple[tuple[str, str], ...]:
    """`headers: {name: pattern}`, or a list of such mappings (as an example of the SMI spec writes it)."""
    if node is None:
        return ()
    maps = node.items if node.kind == "seq" else [node]
    found: dict[str, str] = {}
    for item in maps:
        if item.kind != "map":
            doc.error(item, "expected a mapping of header names to regular expressions")
            continue
        for key, child in item.children.items():
            if not isinstance(key, str) or not TOKEN.fullmatch(key):
                doc.error(child, f"header name must be a token such as User-Agent, got {key!r}")
                continue
            if key.lower() in found:
                doc.error(child, f"header {key.lower()} is matched twice")
                continue
            try:
                found[key.lower()] = parse_pattern(child.value)
            except ValueError as exc:
                doc.error(child, str(exc))
    return tuple(found.items())


def expand_matches(pending: list[PendingSplit], groups: list[RouteGroup], problems: Problems) -> list[PendingSplit]:
    """Each split with `matches` replaced by one split per match and method of the groups it names (merged,
    as SMI says); the others as they are. A name with no HTTPRouteGroup is an error at its line."""
    by_name: dict[str, RouteGroup] = {}
    for g in groups:
        if g.name in by_name:
            first = by_name[g.name].node
            problems.add(g.node.file, g.node.line, "metadata.name",
                         f"duplicate HTTPRouteGroup name {g.name!r} (first at {first.file}:{first.line})")
        else:
            by_name[g.name] = g
    out = []
    for p in pending:
        if not p.group_refs:
            out.append(p)
            continue
        matches: list[GroupMatch] = []
        for ref, node in p.group_refs:
            group = by_name.get(ref)
            if group is None:
                problems.add(node.file, node.line, node.path, f"no HTTPRouteGroup named {ref!r}")
                continue
            matches += [m for m in group.matches if m not in matches]
        for m in matches:
            pattern = None if m.path_regex is None else f"(?:{m.path_regex})(?s:.*)"  # anchored at the start only
            if pattern is not None:
                try:
                    compile_pattern(pattern)
                except ValueError as exc:
                    problems.add(p.node.file, p.node.line, "spec.matches", f"match {m.name!r}: {exc}")
                    continue
            for method in m.methods or (None,):
                suffix = f"/{m.name}" + (f"/{method}" if len(m.methods) > 1 else "")
                conditions = RouteMatch(method=method, header_patterns=m.headers) if method or m.headers else None
                out.append(replace(p, name=p.name + suffix, path_regex=pattern, match=conditions, group_refs=(),
                                   entries=list(p.entries)))
    return out
