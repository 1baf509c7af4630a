"""YAML text -> plain data whose mappings and sequences remember their line numbers.

libyaml's C parser reads the file first and :func:`_build` turns its nodes into data (a 1,000-entry
array parses several times faster); a file it refuses, or one :func:`_build` leaves to PyYAML (a
duplicate key, an aliased list or mapping, a merge key, a tag such as ``!!binary`` or an implicit
timestamp), is parsed again by the pure-Python SafeLoader, whose messages are the ones users see.
Only plain YAML is read: ``!!python/...`` tags are refused, and a key written twice is an error
instead of YAML's silent "last one wins"."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from ..errors import ConfigError
from .problems import one_line

__all__ = ["LineDict", "LineList", "item_line", "key_line", "read_value", "read_yaml"]

#: Deepest nesting of lists and mappings a config may have (aliases expanded).
MAX_DEPTH = 100
#: Most values a config may hold with its aliases expanded (an "alias bomb" of a few hundred
#: bytes expands to billions; a 10,000-task array.params is about 50,000).
MAX_VALUES = 1_000_000


class LineDict(dict[Any, Any]):
    """A mapping from YAML that remembers its own line and the line of each key (1-based)."""

    line: int = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[Any, int] = {}

    @classmethod
    def of(cls, node: yaml.Node) -> LineDict:
        """An empty mapping at ``node``'s line; its keys are added with their lines."""
        mapping = cls()
        mapping.line = node.start_mark.line + 1
        return mapping


class LineList(list[Any]):
    """A sequence from YAML that remembers the line of each item (1-based)."""

    line: int = 1

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines: list[int] = []

    @classmethod
    def of(cls, node: yaml.SequenceNode, items: Iterable[Any]) -> LineList:
        """``items`` (built from ``node``'s children) with ``node``'s line and each child's."""
        sequence = cls(items)
        sequence.line = node.start_mark.line + 1
        sequence.item_lines = [child.start_mark.line + 1 for child in node.value]
        return sequence


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry line numbers (see :class:`LineDict`)."""


#: libyaml's C scanner, parser and composer (its nodes carry their lines too), used first: only
#: its nodes are used, :func:`_build` turns them into data. A file it refuses, or one
#: :func:`_build` leaves, is read again with :class:`_LineLoader`, whose messages the users see.
_FAST_LOADERS: tuple[Any, ...] = (yaml.CSafeLoader,) if getattr(yaml, "__with_libyaml__", False) else ()
_STR = yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG
_SEQ = yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG
_MAP = yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict.of(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain value, not a list or mapping", key_node.start_mark
            ) from None
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> LineList:
    return LineList.of(node, (loader.construct_object(child, deep=True) for child in node.value))


_LineLoader.add_constructor(_MAP, _construct_mapping)
_LineLoader.add_constructor(_SEQ, _construct_sequence)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _find_duplicate(node: yaml.Node, path: str, seen_nodes: set[int]) -> tuple[str, int, int] | None:
    """(key path, line, first line) of the first duplicate mapping key under ``node``, else None."""
    if id(node) in seen_nodes:
        return None
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                ident = (key_node.tag, key_node.value)
                sub = f"{path}.{key_node.value}" if path else str(key_node.value)
                line = key_node.start_mark.line + 1
                if ident in first_line:
                    return sub, line, first_line[ident]
                first_line[ident] = line
            else:
                sub = path or "(root)"
            found = _find_duplicate(value_node, sub, seen_nodes)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            found = _find_duplicate(child, f"{path}[{i}]", seen_nodes)
            if found:
                return found
    return None


class _LeftToPyYAML(Exception):
    """:func:`_build` met something it does not build itself: the slow path reads the file."""


_INT = "tag:yaml.org,2002:int"
_PLAIN_SCALAR_TAGS = frozenset({_STR, _INT, *(f"tag:yaml.org,2002:{t}" for t in ("float", "bool", "null"))})


def _build(loader: Any, node: yaml.Node, seen: set[int]) -> Any:
    """``node`` as :class:`_LineLoader` would construct it, without PyYAML's per-node bookkeeping;
    raises :class:`_LeftToPyYAML` for a list or mapping seen twice (an alias, which PyYAML shares
    and may make recursive), a merge or ``=`` key, a duplicate key, a tag other than the plain
    scalars, ``seq`` and ``map``, or a non-scalar key."""
    tag = node.tag
    if tag in _PLAIN_SCALAR_TAGS and isinstance(node, yaml.ScalarNode):
        if tag == _STR:
            return node.value
        value = node.value
        if tag == _INT and value.isdigit() and (value[0] != "0" or value == "0"):
            return int(value)  # plain decimal; PyYAML's constructor for 0x1F, 017, 1_000, 1:30, -5
        return loader.yaml_constructors[tag](loader, node)
    if id(node) in seen:
        raise _LeftToPyYAML
    seen.add(id(node))
    if tag == _SEQ and isinstance(node, yaml.SequenceNode):
        return LineList.of(node, [_build(loader, child, seen) for child in node.value])
    if tag == _MAP and isinstance(node, yaml.MappingNode):
        mapping = LineDict.of(node)
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _PLAIN_SCALAR_TAGS:
                raise _LeftToPyYAML
            key = _build(loader, key_node, seen)
            if key in mapping:
                raise _LeftToPyYAML
            mapping[key] = _build(loader, value_node, seen)
            mapping.key_lines[key] = key_node.start_mark.line + 1
        return mapping
    raise _LeftToPyYAML


def _check_bounds(node: yaml.Node, source: str, lines: bool = True) -> None:
    """Refuse a document deeper than :data:`MAX_DEPTH` or larger than :data:`MAX_VALUES` with its
    aliases expanded, or with an alias inside itself; in one walk over the distinct nodes."""
    seen: dict[int, tuple[int, int]] = {}  # node -> (values, height) of its expansion; (-1, 0) while open

    def walk(n: yaml.Node, depth: int) -> tuple[int, int]:
        where = f"{source}:{n.start_mark.line + 1}: (yaml)" if lines else source
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep; "
                              "flatten the lists and mappings")  # fmt: skip
        done = seen.get(id(n))
        if done is None:
            seen[id(n)] = (-1, 0)
            values, height = 1, 0
            children = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else \
                n.value if isinstance(n, yaml.SequenceNode) else []  # fmt: skip
            for child in children:
                v, h = walk(child, depth + 1)
                values, height = values + v, max(height, h + 1)
                if values > MAX_VALUES:
                    break
            done = seen[id(n)] = (values, height)
        elif done[0] < 0:
            raise ConfigError(f"{where}: an alias inside its own anchor (a loop); remove it")
        if depth + done[1] > MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep (aliases "
                              "expanded); flatten the lists and mappings")  # fmt: skip
        if done[0] > MAX_VALUES:
            raise ConfigError(f"{where}: more than {MAX_VALUES:,} values with its aliases "
                              "expanded (an alias of an alias of ...); write the values out, or fewer")  # fmt: skip
        return done

    walk(node, 0)


def _compose(loader: Any, source: str, lines: bool = True) -> yaml.Node | None:
    """The document's node graph, bounded (:func:`_check_bounds`); PyYAML's composer recurses once
    per level, so a document nested deeper than Python's stack is refused here too."""
    try:
        node = loader.get_single_node()
    except RecursionError:
        where = f"{source}:1: (yaml)" if lines else source
        raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep; "
                          "flatten the lists and mappings") from None  # fmt: skip
    if node is not None:
        _check_bounds(node, source, lines)
    return node


def read_value(text: str, source: str) -> Any:
    """One YAML value (``--set key=VALUE``), bounded as a config file is; plain data, no line numbers."""
    loader = yaml.SafeLoader(text)
    try:
        node = _compose(loader, source, lines=False)
        return None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(text: str, source: str) -> Any:
    """The document, with line numbers and no duplicate keys; a ConfigError naming file:line if not."""
    for fast in _FAST_LOADERS:
        loader = fast(text)
        try:
            node = _compose(loader, source)
            return None if node is None else _build(loader, node, set())
        except (yaml.YAMLError, _LeftToPyYAML):
            pass
        finally:
            loader.dispose()
        # Invalid YAML, a duplicate key or an alias: parse again below, to report or build it PyYAML's way.
    loader = _LineLoader(text)
    try:
        node = _compose(loader, source)
        if node is None:
            return None
        dup = _find_duplicate(node, "", set())
        if dup is not None:
            path, line, first = dup
            raise ConfigError(
                f"{source}:{line}: {path}: duplicate key (first written at line {first}); "
                "keep only one of the two, YAML would silently drop one"
            )
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = one_line(exc.problem or exc.context or "invalid YAML")
        if exc.context and exc.problem:
            problem += f" ({one_line(exc.context)}"
            cmark = exc.context_mark
            if cmark is not None and mark is not None and cmark.line != mark.line:
                problem += f" started at line {cmark.line + 1}"
            problem += ")"
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            fix = "only plain YAML is accepted (no !!python or other custom tags), so remove the tag"
        elif isinstance(exc, yaml.constructor.ConstructorError):
            fix = "write a plain key such as 'name:' (no '? [list]' keys, no recursive anchors)"
        else:
            fix = "check indentation (spaces, not tabs), colons after keys and matching quotes/brackets near this line"
        raise ConfigError(f"{source}:{line}: (yaml): invalid YAML: {problem}; {fix}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}:1: (yaml): invalid YAML: {one_line(str(exc))}; fix the YAML syntax") from None
    finally:
        loader.dispose()


def key_line(container: Any, key: Any, default: int) -> int:
    """Line of ``key`` in a mapping read from YAML; ``default`` for one made in code (``--set``)."""
    if isinstance(container, LineDict):
        return container.key_lines.get(key, container.line)
    return default


def item_line(container: Any, index: int, default: int) -> int:
    """Line of item ``index`` of a sequence read from YAML, else ``default``."""
    if isinstance(container, LineList) and index < len(container.item_lines):
        return container.item_lines[index]
    return default
