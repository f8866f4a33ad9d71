"""Read multi-document YAML keeping the source line of every mapping key and list item.

`Node` wraps a plain value with its file and 1-based line; mappings become `MapNode`
whose `.get(key)` returns child Nodes, so loaders can report `FILE:LINE: field: msg`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import yaml

from .errors import Problem, ConfigError


@dataclass
class Node:
    value: Any
    file: str
    line: int
    path: str = ""
    children: dict = field(default_factory=dict)  # key -> Node (mappings)
    items: list = field(default_factory=list)  # Nodes (sequences)
    kind: str = "scalar"  # scalar | map | seq

    def get(self, key: str) -> "Node | None":
        return self.children.get(key)

    def child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key


_loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Values one file may expand to. Aliases repeat a node wherever they point, so ten nested lists of
# ten aliases (a few hundred bytes) would expand to 10^10 values: refused instead of hanging a reload.
MAX_NODES = 200_000


def _convert(node: yaml.Node, file: str, path: str, budget: list[int]) -> Node:
    line = node.start_mark.line + 1
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError([Problem(file, line, path, f"YAML expands to more than {MAX_NODES} values "
                                                     "(aliases repeating aliases?)")])
    if isinstance(node, yaml.MappingNode):
        out = Node({}, file, line, path, kind="map")
        for knode, vnode in node.value:
            key = _scalar(knode)
            child = _convert(vnode, file, out.child_path(str(key)), budget)
            child.line = knode.start_mark.line + 1
            if key in out.children:
                raise ConfigError([Problem(file, child.line, out.child_path(str(key)), "duplicate key")])
            out.children[key] = child
            out.value[key] = child.value
        return out
    if isinstance(node, yaml.SequenceNode):
        out = Node([], file, line, path, kind="seq")
        for i, item in enumerate(node.value):
            child = _convert(item, file, out.child_path(i), budget)
            out.items.append(child)
            out.value.append(child.value)
        return out
    return Node(_scalar(node), file, line, path)


def _scalar(node: yaml.Node) -> Any:
    # Construct scalars with the safe constructor so `1`, `true`, `null` get their YAML types.
    return yaml.SafeLoader.construct_object(_SCALAR_LOADER, node) if isinstance(node, yaml.ScalarNode) else None


_SCALAR_LOADER = yaml.SafeLoader("")


def read_documents(path: str) -> Iterator[Node]:
    """Yield one Node per non-empty YAML document in `path` (a file)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError([Problem(path, 0, "", f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(path, 0, "", "not UTF-8 text")]) from None
    return parse_documents(text, path)


def parse_documents(text: str, path: str) -> Iterator[Node]:
    """Yield one Node per non-empty YAML document of `text`; `path` names it in errors."""
    try:
        roots = list(yaml.compose_all(text, Loader=_loader_cls))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigError([Problem(path, line, "", f"YAML syntax: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(path, 0, "", f"YAML syntax: {exc}")]) from None
    budget = [MAX_NODES]
    for root in roots:
        if root is None:
            continue
        yield _convert(root, path, "", budget)


def config_files(path: str) -> list[str]:
    """A file, or every *.yaml / *.yml in a directory (sorted, not recursive)."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith((".yaml", ".yml")) and not n.startswith("."))
        return [os.path.join(path, n) for n in names]
    return [path]
