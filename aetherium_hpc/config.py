"""YAML job configuration -> validated, frozen dataclasses.

Flow::

    file text --_FastLineLoader (libyaml's C parser; else, or to word an error, _LineLoader:
                SafeLoader with line numbers, no duplicate keys)--> raw mappings
              --apply --set overrides--> --validate section by section--> Config

Only plain YAML is read (``yaml.SafeLoader``); ``!!python/...`` tags are refused.
Every problem is raised as one :class:`~aetherium_hpc.errors.ConfigError` whose message is
one line::

    FILE:LINE: key.path: problem; how to fix

Public API: :func:`load_config`, :func:`parse_config`, :func:`config_from_dict` and the
dataclasses :class:`Config`, :class:`Resources`, :class:`SlurmSettings`, :class:`Workload`,
:class:`ArraySpec`, :class:`Monitoring`, :class:`ReportSettings`. docs/CONFIG.md lists every key.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import importlib
import itertools
import json
import keyword
import math
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NoReturn, cast

import yaml

from .errors import ConfigError

__all__ = [
    "BACKENDS",
    "ArraySpec",
    "Config",
    "Monitoring",
    "ReportSettings",
    "Resources",
    "SlurmSettings",
    "Workload",
    "config_from_dict",
    "load_config",
    "parse_config",
]

Backend = Literal["auto", "slurm", "local", "debug"]
#: Accepted values of ``backend``.
BACKENDS: tuple[str, ...] = ("auto", "slurm", "local", "debug")

#: Largest number of array tasks a config may describe (Slurm's own MaxArraySize cap is 4,000,001).
MAX_ARRAY_TASKS = 1_000_000

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CALLABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SBATCH_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")

# additional_parameters keys that aetherium-hpc (through submitit) already writes itself.
_SBATCH_OWNED = {
    "partition": "slurm.partition",
    "account": "slurm.account",
    "qos": "slurm.qos",
    "constraint": "slurm.constraint",
    "time": "resources.timeout_min",
    "nodes": "resources.nodes",
    "ntasks_per_node": "resources.tasks_per_node",
    "cpus_per_task": "resources.cpus_per_task",
    "gpus_per_node": "resources.gpus_per_node",
    "mem": "resources.mem_gb",
    "signal": "slurm.signal_delay_s",
    "exclusive": "slurm.exclusive",
    "array": "array (and slurm.array_parallelism)",
    "job_name": "name",
    "output": "run_dir (aetherium-hpc places the logs)",
    "error": "run_dir (aetherium-hpc places the logs)",
}


# --------------------------------------------------------------------------------------------
# Dataclasses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What one job asks the scheduler for (per array task)."""

    timeout_min: int = 60
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem_gb: float | None = None

    @property
    def total_tasks(self) -> int:
        """Number of processes of one job: nodes x tasks_per_node."""
        return self.nodes * self.tasks_per_node


@dataclass(frozen=True)
class SlurmSettings:
    """Slurm-only settings; ignored by the local and debug backends."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 120
    setup: tuple[str, ...] = ()
    array_parallelism: int | None = None
    max_array_size: int | None = None
    additional_parameters: dict[str, str | int | bool] = field(default_factory=dict)
    exclusive: bool = False


@dataclass(frozen=True)
class Workload:
    """What runs inside the job: a Python callable *or* a command (exactly one is set)."""

    callable: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None

    @property
    def kind(self) -> Literal["callable", "command"]:
        return "callable" if self.callable is not None else "command"

    def split_callable(self) -> tuple[str, str]:
        """``"pkg.mod:func"`` -> ``("pkg.mod", "func")``."""
        if self.callable is None:
            raise ConfigError("workload.callable: not set (this workload is a command); use workload.command")
        module, _, func = self.callable.partition(":")
        return module, func

    def load_callable(self) -> Callable[..., Any]:
        """Import the module and return the function named by ``callable``."""
        module_name, func_name = self.split_callable()
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"workload.callable: cannot import module {module_name!r} ({exc}); "
                "check the spelling and that the package is installed in the job's Python"
            ) from exc
        func = getattr(module, func_name, None)
        if func is None or not callable(func):
            raise ConfigError(
                f"workload.callable: module {module_name!r} has no callable {func_name!r}; "
                "check the name after the colon"
            )
        return cast(Callable[..., Any], func)


@dataclass(frozen=True)
class ArraySpec:
    """A job array: explicit ``params`` (one mapping per task) or a cartesian ``sweep``."""

    params: tuple[dict[str, Any], ...] | None = None
    sweep: dict[str, tuple[Any, ...]] | None = None

    def expand(self) -> list[dict[str, Any]]:
        """One kwargs mapping per array task, in task order."""
        if self.params is not None:
            return [copy.deepcopy(p) for p in self.params]
        if self.sweep is not None:
            keys = list(self.sweep)
            return [
                dict(zip(keys, copy.deepcopy(combo), strict=True)) for combo in itertools.product(*self.sweep.values())
            ]
        return []

    def __len__(self) -> int:
        if self.params is not None:
            return len(self.params)
        if self.sweep is not None:
            return math.prod(len(v) for v in self.sweep.values())
        return 0


@dataclass(frozen=True)
class Monitoring:
    """Resource monitor and metrics store settings."""

    enabled: bool = True
    interval_s: float = 1.0
    gpu: bool = True
    buffer_size: int = 100
    flush_interval_s: float = 5.0
    checkpoint_interval_s: float = 30.0
    local_dir: str | None = None


@dataclass(frozen=True)
class ReportSettings:
    """What happens after the job."""

    auto: bool = False


@dataclass(frozen=True)
class Config:
    """A validated job configuration. Build it with :func:`load_config`."""

    name: str
    workload: Workload
    backend: Backend = "auto"
    run_dir: str = "runs"
    resources: Resources = field(default_factory=Resources)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    array: ArraySpec | None = None
    monitoring: Monitoring = field(default_factory=Monitoring)
    report: ReportSettings = field(default_factory=ReportSettings)
    #: Where the config came from (file path or "<string>"); not part of :meth:`to_dict`.
    source: str = field(default="<dict>", compare=False)

    @property
    def is_array(self) -> bool:
        return self.array is not None

    def array_params(self) -> list[dict[str, Any]]:
        """One kwargs mapping per array task (sweep: itertools.product in key order); [] if no array."""
        return [] if self.array is None else self.array.expand()

    def to_dict(self) -> dict[str, Any]:
        """Every key with its effective value, JSON-able; loads back to an equal Config."""
        wl = self.workload
        workload: dict[str, Any] = {}
        if wl.callable is not None:
            workload["callable"] = wl.callable
            workload["kwargs"] = copy.deepcopy(wl.kwargs)
        else:
            workload["command"] = list(wl.command or ())
        workload["env"] = dict(wl.env)
        workload["workdir"] = wl.workdir
        array: dict[str, Any] | None = None
        if self.array is not None:
            if self.array.params is not None:
                array = {"params": [copy.deepcopy(p) for p in self.array.params]}
            else:
                array = {"sweep": {k: copy.deepcopy(list(v)) for k, v in (self.array.sweep or {}).items()}}
        s = self.slurm
        return {
            "name": self.name,
            "backend": self.backend,
            "run_dir": self.run_dir,
            "resources": {f.name: getattr(self.resources, f.name) for f in fields(Resources)},
            "slurm": {
                "partition": s.partition,
                "account": s.account,
                "qos": s.qos,
                "constraint": s.constraint,
                "signal_delay_s": s.signal_delay_s,
                "setup": list(s.setup),
                "array_parallelism": s.array_parallelism,
                "max_array_size": s.max_array_size,
                "additional_parameters": dict(s.additional_parameters),
                "exclusive": s.exclusive,
            },
            "workload": workload,
            "array": array,
            "monitoring": {f.name: getattr(self.monitoring, f.name) for f in fields(Monitoring)},
            "report": {f.name: getattr(self.report, f.name) for f in fields(ReportSettings)},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def dump_yaml(self) -> str:
        """The effective configuration as YAML text (readable by :func:`parse_config`)."""
        return yaml_text(self.to_dict(), default_flow_style=False, allow_unicode=True)


#: libyaml's C emitter when PyYAML has it (the same text, several times faster for a 1,000-entry array).
_SAFE_DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def yaml_text(data: Any, **options: Any) -> str:
    """``yaml.safe_dump(data, sort_keys=False, **options)``, with libyaml's emitter when available."""
    return str(yaml.dump(data, Dumper=_SAFE_DUMPER, sort_keys=False, **options))


# --------------------------------------------------------------------------------------------
# Loading: a SafeLoader that keeps line numbers
# --------------------------------------------------------------------------------------------


class _LineDict(dict[Any, Any]):
    """A mapping from YAML that remembers its own line and the line of each key (1-based)."""

    line: int = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines: dict[Any, int] = {}


class _LineList(list[Any]):
    """A sequence from YAML that remembers the line of each item (1-based)."""

    line: int = 1

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines: list[int] = []


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry line numbers (see :class:`_LineDict`)."""


if getattr(yaml, "__with_libyaml__", False):

    class _FastLineLoader(yaml.CSafeLoader):
        """The same with libyaml's C scanner, parser and composer (its nodes carry their lines too):
        a 1,000-entry array parses several times faster. Used first; a file it refuses is parsed
        again with :class:`_LineLoader`, whose error messages the users see."""

    _FAST_LOADERS: tuple[Any, ...] = (_FastLineLoader,)
else:  # pragma: no cover - PyYAML built without libyaml
    _FAST_LOADERS = ()


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    result = _LineDict()
    result.line = node.start_mark.line + 1
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


def _construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> _LineList:
    result = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


for _loader in (_LineLoader, *_FAST_LOADERS):
    _loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
    _loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)

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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _read_yaml(text: str, source: str) -> Any:
    """The document, with line numbers and no duplicate keys; a ConfigError naming file:line if not."""
    for fast in _FAST_LOADERS:
        loader = fast(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            if _find_duplicate(node, "", set()) is None:
                return loader.construct_document(node)
        except yaml.YAMLError:
            pass
        finally:
            loader.dispose()
        # Invalid YAML or a duplicate key: parse again below, to report it in the usual words.
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
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
        problem = _one_line(exc.problem or exc.context or "invalid YAML")
        if exc.context and exc.problem:
            problem += f" ({_one_line(exc.context)}"
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
        raise ConfigError(f"{source}:1: (yaml): invalid YAML: {_one_line(str(exc))}; fix the YAML syntax") from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------

_MISSING: Any = object()


def _show(value: Any) -> str:
    """Short, one-line description of a YAML value for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return f"a date ({value})"
    return f"a {type(value).__name__}"


def _key_line(container: Any, key: Any, default: int) -> int:
    if isinstance(container, _LineDict):
        return container.key_lines.get(key, container.line)
    return default


def _item_line(container: Any, index: int, default: int) -> int:
    if isinstance(container, _LineList) and index < len(container.item_lines):
        return container.item_lines[index]
    return default


class _Ctx:
    """Where the config came from, and which keys --set overrides touched."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.overrides: list[tuple[str, str]] = []  # (dotted key, full override text)

    def _note(self, path: str) -> str:
        hits = [
            text
            for key, text in self.overrides
            if path == key or path.startswith(key + ".") or path.startswith(key + "[") or key.startswith(path + ".")
        ]
        return "".join(f" (from --set {_one_line(t)})" for t in hits)

    def fail(self, line: int, path: str, problem: str, fix: str) -> NoReturn:
        raise ConfigError(f"{self.source}:{line}: {path}: {_one_line(problem)}{self._note(path)}; {_one_line(fix)}")


# Key -> sections holding it, for "did you mean" across sections.
def _section_keys() -> dict[str, tuple[str, ...]]:
    return {
        "resources": tuple(f.name for f in fields(Resources)),
        "slurm": tuple(f.name for f in fields(SlurmSettings)),
        "workload": tuple(f.name for f in fields(Workload)),
        "array": tuple(f.name for f in fields(ArraySpec)),
        "monitoring": tuple(f.name for f in fields(Monitoring)),
        "report": tuple(f.name for f in fields(ReportSettings)),
    }


_SECTIONS = _section_keys()
_TOP_KEYS: tuple[str, ...] = ("name", "backend", "run_dir", *_SECTIONS)


def _suggest(key: str, valid: Sequence[str], section: str) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}? "
    homes = [sec for sec, keys in _SECTIONS.items() if key in keys and sec != section]
    if key in _TOP_KEYS and section:
        return f"{key!r} belongs at the top level, not under {section}:; "
    if homes:
        return f"{key!r} belongs under {homes[0]}: ({homes[0]}.{key}); "
    everywhere = [f"{sec}.{k}" for sec, keys in _SECTIONS.items() if sec != section for k in keys]
    close = difflib.get_close_matches(key, [p.split(".", 1)[1] for p in everywhere], n=1, cutoff=0.75)
    if close:
        full = next(p for p in everywhere if p.endswith("." + close[0]))
        return f"did you mean {full!r}? "
    return ""


class _Section:
    """Reads typed values out of one mapping of the config, failing with file:line."""

    def __init__(self, ctx: _Ctx, data: Mapping[Any, Any], path: str, line: int, valid: Sequence[str]) -> None:
        self.ctx = ctx
        self.data = data
        self.path = path
        self.line = data.line if isinstance(data, _LineDict) else line
        for key in data:
            if key not in valid:
                key_text = str(key)
                ctx.fail(
                    self.line_of(key),
                    self.at(key_text),
                    f"unknown key {key_text!r}",
                    f"{_suggest(key_text, valid, path)}valid keys{' in ' + path if path else ''}: " + ", ".join(valid),
                )

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: Any) -> int:
        return _key_line(self.data, key, self.line)

    def get(self, key: str) -> Any:
        return self.data.get(key, _MISSING)

    def fail(self, key: str, problem: str, fix: str) -> NoReturn:
        self.ctx.fail(self.line_of(key), self.at(key), problem, fix)

    # -- scalars ---------------------------------------------------------------------------

    def _int(self, key: str, value: Any, minimum: int, example: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = f"write a whole number such as {example}"
            if isinstance(value, float) and value.is_integer():
                hint = f"write {int(value)} without the decimal point"
            elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
                hint = f"remove the quotes: {key}: {value.strip()}"
            self.fail(key, f"must be an integer, got {_show(value)}", hint)
        if value < minimum:
            self.fail(key, f"must be >= {minimum}, got {value}", f"use a value of at least {minimum}, e.g. {example}")
        return value

    def integer(self, key: str, default: int, minimum: int, example: int | None = None) -> int:
        value = self.get(key)
        if value is _MISSING:
            return default
        if value is None:
            self.fail(key, "must be an integer, got null", f"remove the key to use the default {default}")
        return self._int(key, value, minimum, default if example is None else example)

    def opt_integer(self, key: str, minimum: int, example: int) -> int | None:
        value = self.get(key)
        if value is _MISSING or value is None:
            return None
        return self._int(key, value, minimum, example)

    def _number(
        self, key: str, value: Any, *, gt: float | None, ge: float | None, le: float | None, example: float
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = f"write a number such as {example}"
            if isinstance(value, str):
                hint += " (no quotes, no unit)"
            self.fail(key, f"must be a number, got {_show(value)}", hint)
        if not math.isfinite(value):
            self.fail(key, f"must be a finite number, got {value}", f"write a number such as {example}")
        if gt is not None and not value > gt:
            self.fail(key, f"must be > {gt:g}, got {value}", f"use a positive value such as {example}")
        if ge is not None and not value >= ge:
            self.fail(key, f"must be >= {ge:g}, got {value}", f"use a value such as {example}")
        if le is not None and not value <= le:
            self.fail(key, f"must be <= {le:g}, got {value}", f"use a value between the limits, e.g. {example}")
        return value

    def number(
        self, key: str, default: float, *, gt: float | None = None, ge: float | None = None, le: float | None = None
    ) -> float:
        value = self.get(key)
        if value is _MISSING:
            return default
        if value is None:
            self.fail(key, "must be a number, got null", f"remove the key to use the default {default}")
        return float(self._number(key, value, gt=gt, ge=ge, le=le, example=default))

    def opt_number(self, key: str, *, gt: float, example: float) -> float | None:
        value = self.get(key)
        if value is _MISSING or value is None:
            return None
        return self._number(key, value, gt=gt, ge=None, le=None, example=example)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, got {_show(value)}", f"write {key}: true or {key}: false")
        return value

    def opt_string(self, key: str, example: str) -> str | None:
        value = self.get(key)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, str):
            self.fail(key, f"must be a string, got {_show(value)}", f'quote it: {key}: "{value}" (e.g. "{example}")')
        if not value.strip():
            self.fail(key, "must not be empty", f"remove the key or write {key}: {example}")
        return value

    def string(self, key: str, default: str, example: str) -> str:
        value = self.opt_string(key, example)
        if value is None:
            if self.get(key) is None:
                self.fail(key, "must be a string, got null", f"remove the key to use the default {default!r}")
            return default
        return value

    # -- containers -------------------------------------------------------------------------

    def mapping(self, key: str) -> Mapping[Any, Any]:
        value = self.get(key)
        if value is _MISSING or value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(
                key,
                f"must be a mapping (key: value lines indented below {key}:), got {_show(value)}",
                f"write {key}: followed by indented 'key: value' lines, or {key}: {{}}",
            )
        return value

    def str_mapping(self, key: str, key_re: re.Pattern[str], key_rule: str, example: str) -> dict[str, str]:
        value = self.mapping(key)
        out: dict[str, str] = {}
        for k, v in value.items():
            line = _key_line(value, k, self.line_of(key))
            path = f"{self.at(key)}.{k}"
            if not isinstance(k, str) or not key_re.fullmatch(k):
                self.ctx.fail(line, path, f"key {_show(k)} is not {key_rule}", f"rename it, e.g. {example}")
            if not isinstance(v, str):
                self.ctx.fail(line, path, f"must be a string, got {_show(v)}", f'quote the value: {k}: "{v}"')
            out[k] = v
        return out


def _check_plain(ctx: _Ctx, value: Any, path: str, line: int) -> Any:
    """Refuse YAML values that would not survive JSON (dates, bytes, sets, non-string keys)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            ctx.fail(line, path, f"must be a finite number, got {value}", "use a finite value or a string")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            kline = _key_line(value, k, line)
            if not isinstance(k, str):
                ctx.fail(kline, f"{path}.{k}", f"key {_show(k)} must be a string", f'quote it: "{k}":')
            out[k] = _check_plain(ctx, v, f"{path}.{k}", kline)
        return out
    if isinstance(value, (list, tuple)):
        return [_check_plain(ctx, v, f"{path}[{i}]", _item_line(value, i, line)) for i, v in enumerate(value)]
    ctx.fail(line, path, f"unsupported value {_show(value)}", 'quote it to make it a string, e.g. "2024-01-01"')


def _check_ident(ctx: _Ctx, key: Any, path: str, line: int, what: str) -> str:
    if not isinstance(key, str) or not _IDENT_RE.fullmatch(key) or keyword.iskeyword(key):
        ctx.fail(
            line,
            f"{path}.{key}",
            f"{what} name {_show(key)} is not a Python identifier (it becomes a keyword argument)",
            "use letters, digits and underscores, not starting with a digit, e.g. learning_rate",
        )
    return key


def _check_kwargs(ctx: _Ctx, value: Mapping[Any, Any], path: str, line: int, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        kline = _key_line(value, k, line)
        out[_check_ident(ctx, k, path, kline, what)] = _check_plain(ctx, v, f"{path}.{k}", kline)
    return out


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _section(ctx: _Ctx, top: _Section, key: str) -> _Section:
    value = top.get(key)
    if value is _MISSING or value is None:
        value = {}
    if not isinstance(value, Mapping):
        top.fail(
            key,
            f"must be a section (a mapping of keys), got {_show(value)}",
            f"indent its keys below {key}:, or write it inline, e.g. {key}: {{{_SECTIONS[key][0]}: ...}}",
        )
    return _Section(ctx, value, key, top.line_of(key), _SECTIONS[key])


def _resources(ctx: _Ctx, top: _Section) -> Resources:
    s = _section(ctx, top, "resources")
    return Resources(
        timeout_min=s.integer("timeout_min", 60, 1),
        nodes=s.integer("nodes", 1, 1),
        tasks_per_node=s.integer("tasks_per_node", 1, 1),
        cpus_per_task=s.integer("cpus_per_task", 1, 1),
        gpus_per_node=s.integer("gpus_per_node", 0, 0, example=1),
        mem_gb=s.opt_number("mem_gb", gt=0, example=4),
    )


def _slurm(ctx: _Ctx, top: _Section) -> SlurmSettings:
    s = _section(ctx, top, "slurm")
    setup_raw = s.get("setup")
    setup: list[str] = []
    if setup_raw is not _MISSING and setup_raw is not None:
        if isinstance(setup_raw, str):
            s.fail(
                "setup",
                "must be a list of shell lines, got a single string",
                f"write setup: [{json.dumps(setup_raw)}] or one '- line' per line",
            )
        if not isinstance(setup_raw, list):
            s.fail(
                "setup",
                f"must be a list of shell lines, got {_show(setup_raw)}",
                'write setup: ["module load cuda"] or one "- line" per line',
            )
        for i, item in enumerate(setup_raw):
            if not isinstance(item, str):
                ctx.fail(
                    _item_line(setup_raw, i, s.line_of("setup")),
                    f"slurm.setup[{i}]",
                    f"must be a string, got {_show(item)}",
                    "quote the line",
                )
            setup.append(item)

    extra: dict[str, str | int | bool] = {}
    for k, v in s.mapping("additional_parameters").items():
        line = _key_line(s.get("additional_parameters"), k, s.line_of("additional_parameters"))
        path = f"slurm.additional_parameters.{k}"
        if not isinstance(k, str) or not _SBATCH_KEY_RE.fullmatch(k):
            bare = str(k).lstrip("-")
            ctx.fail(
                line,
                path,
                f"key {_show(k)} is not an sbatch option name",
                f"write the long option without dashes, e.g. {bare or 'mail_type'}: ... for --{bare or 'mail-type'}",
            )
        owned = _SBATCH_OWNED.get(k.replace("-", "_"))
        if owned:
            ctx.fail(line, path, "is set by aetherium-hpc itself", f"use {owned} instead")
        if v is None or isinstance(v, float) or not isinstance(v, (str, int, bool)):
            ctx.fail(line, path, f"must be a string, integer or boolean, got {_show(v)}", f'quote it: {k}: "{v}"')
        extra[k] = v

    return SlurmSettings(
        partition=s.opt_string("partition", "gpu"),
        account=s.opt_string("account", "my_project"),
        qos=s.opt_string("qos", "normal"),
        constraint=s.opt_string("constraint", "a100"),
        signal_delay_s=s.integer("signal_delay_s", 120, 0),
        setup=tuple(setup),
        array_parallelism=s.opt_integer("array_parallelism", 1, 4),
        max_array_size=s.opt_integer("max_array_size", 1, 1000),
        additional_parameters=extra,
        exclusive=s.boolean("exclusive", False),
    )


def _workload(ctx: _Ctx, top: _Section) -> Workload:
    raw = top.get("workload")
    if raw is _MISSING or raw is None:
        top.fail(
            "workload",
            "missing required section",
            'add workload: with callable: "pkg.module:function" or command: [python, train.py]',
        )
    s = _section(ctx, top, "workload")
    func = s.get("callable")
    cmd = s.get("command")
    has_func = func is not _MISSING and func is not None
    has_cmd = cmd is not _MISSING and cmd is not None
    if has_func and has_cmd:
        later = "command" if s.line_of("command") >= s.line_of("callable") else "callable"
        ctx.fail(
            s.line_of(later),
            "workload",
            "has both callable and command",
            "keep exactly one of them (callable for a Python function, command for a program)",
        )
    if not has_func and not has_cmd:
        top.fail(
            "workload",
            "needs callable or command",
            'add callable: "pkg.module:function" or command: [python, train.py]',
        )

    callable_: str | None = None
    kwargs: dict[str, Any] = {}
    command: tuple[str, ...] | None = None
    if has_func:
        if not isinstance(func, str):
            s.fail("callable", f"must be a string, got {_show(func)}", 'write callable: "pkg.module:function"')
        if not _CALLABLE_RE.fullmatch(func.strip()) or any(
            keyword.iskeyword(part) for part in re.split(r"[.:]", func.strip())
        ):
            s.fail(
                "callable",
                f"{func!r} is not of the form 'pkg.module:function'",
                "write the dotted module, a colon, then the function name, e.g. aetherium_hpc.demo.pipeline:run",
            )
        callable_ = func.strip()
        kwargs = _check_kwargs(ctx, s.mapping("kwargs"), "workload.kwargs", s.line_of("kwargs"), "argument")
    else:
        if s.get("kwargs") not in (_MISSING, None) and s.mapping("kwargs"):
            s.fail(
                "kwargs",
                "only applies to a callable workload",
                "put the arguments into the command list instead, e.g. command: [python, train.py, --epochs, '5']",
            )
        if isinstance(cmd, str):
            try:
                parts = shlex.split(cmd)
            except ValueError:
                parts = cmd.split()
            s.fail(
                "command",
                "must be a list of arguments, not one string",
                f"split it into a list: command: {json.dumps(parts)}",
            )
        if not isinstance(cmd, list):
            s.fail("command", f"must be a list of strings, got {_show(cmd)}", "write command: [python, train.py]")
        if not cmd:
            s.fail("command", "must not be empty", "write the program and its arguments: command: [python, train.py]")
        for i, item in enumerate(cmd):
            if not isinstance(item, str):
                ctx.fail(
                    _item_line(cmd, i, s.line_of("command")),
                    f"workload.command[{i}]",
                    f"must be a string, got {_show(item)}",
                    f"quote it: '{item}'",
                )
        command = tuple(cmd)

    return Workload(
        callable=callable_,
        kwargs=kwargs,
        command=command,
        env=s.str_mapping("env", _ENV_RE, "a valid environment variable name", "OMP_NUM_THREADS"),
        workdir=s.opt_string("workdir", "/path/to/project"),
    )


def _array(ctx: _Ctx, top: _Section) -> ArraySpec | None:
    raw = top.get("array")
    if raw is _MISSING or raw is None:
        return None
    s = _section(ctx, top, "array")
    params_raw = s.get("params")
    sweep_raw = s.get("sweep")
    has_params = params_raw is not _MISSING
    has_sweep = sweep_raw is not _MISSING
    if has_params and has_sweep:
        later = "sweep" if s.line_of("sweep") >= s.line_of("params") else "params"
        ctx.fail(
            s.line_of(later),
            "array",
            "has both params and sweep",
            "keep one: params lists each task, sweep builds every combination",
        )
    if not has_params and not has_sweep:
        top.fail(
            "array",
            "needs params or sweep",
            "add params: [{seed: 0}, {seed: 1}] or sweep: {seed: [0, 1]}, or remove array:",
        )

    if has_params:
        if not isinstance(params_raw, list):
            s.fail(
                "params",
                f"must be a list of mappings (one per task), got {_show(params_raw)}",
                "write params: [{seed: 0}, {seed: 1}], or use sweep: for combinations",
            )
        if not params_raw:
            s.fail("params", "must not be empty", "list at least one task, e.g. params: [{seed: 0}]")
        params: list[dict[str, Any]] = []
        for i, item in enumerate(params_raw):
            line = _item_line(params_raw, i, s.line_of("params"))
            if not isinstance(item, Mapping):
                ctx.fail(
                    line,
                    f"array.params[{i}]",
                    f"must be a mapping of arguments, got {_show(item)}",
                    "write each task as {name: value, ...}, e.g. {seed: 0}",
                )
            params.append(_check_kwargs(ctx, item, f"array.params[{i}]", line, "parameter"))
        spec = ArraySpec(params=tuple(params))
    else:
        if not isinstance(sweep_raw, Mapping):
            s.fail(
                "sweep",
                f"must be a mapping of name: [values], got {_show(sweep_raw)}",
                "write sweep: {learning_rate: [0.01, 0.1], seed: [0, 1]}",
            )
        if not sweep_raw:
            s.fail("sweep", "must not be empty", "add at least one name: [values], e.g. sweep: {seed: [0, 1]}")
        sweep: dict[str, tuple[Any, ...]] = {}
        for k, values in sweep_raw.items():
            line = _key_line(sweep_raw, k, s.line_of("sweep"))
            _check_ident(ctx, k, "array.sweep", line, "parameter")
            path = f"array.sweep.{k}"
            if not isinstance(values, list):
                ctx.fail(
                    line,
                    path,
                    f"must be a list of values, got {_show(values)}",
                    f"write {k}: [{json.dumps(values) if isinstance(values, (int, float, str)) else '...'}]"
                    " even for a single value",
                )
            if not values:
                ctx.fail(line, path, "must not be an empty list", f"give at least one value, e.g. {k}: [0]")
            sweep[k] = tuple(_check_plain(ctx, values, path, line))
        spec = ArraySpec(sweep=sweep)

    if len(spec) > MAX_ARRAY_TASKS:
        top.fail(
            "array",
            f"describes {len(spec)} tasks, more than {MAX_ARRAY_TASKS}",
            "shrink the sweep (fewer values per key)",
        )
    return spec


def _monitoring(ctx: _Ctx, top: _Section) -> Monitoring:
    s = _section(ctx, top, "monitoring")
    return Monitoring(
        enabled=s.boolean("enabled", True),
        interval_s=s.number("interval_s", 1.0, gt=0, le=3600),
        gpu=s.boolean("gpu", True),
        buffer_size=s.integer("buffer_size", 100, 1),
        flush_interval_s=s.number("flush_interval_s", 5.0, gt=0),
        checkpoint_interval_s=s.number("checkpoint_interval_s", 30.0, ge=0),
        local_dir=s.opt_string("local_dir", "/scratch/$USER"),
    )


def _report(ctx: _Ctx, top: _Section) -> ReportSettings:
    s = _section(ctx, top, "report")
    return ReportSettings(auto=s.boolean("auto", False))


def _validate(ctx: _Ctx, data: Any) -> Config:
    if data is None:
        ctx.fail(
            1,
            "(root)",
            "the file is empty",
            "write at least 'name: my-job' and a 'workload:' section (see configs/train.yaml)",
        )
    if not isinstance(data, Mapping):
        line = data.line if isinstance(data, _LineList) else 1
        ctx.fail(
            line,
            "(root)",
            f"the top level must be a mapping of keys, got {_show(data)}",
            "start the file with 'name: my-job' and sections like 'workload:' at the left margin",
        )
    top = _Section(ctx, data, "", 1, _TOP_KEYS)

    name = top.get("name")
    if name is _MISSING or name is None:
        top.fail("name", "missing required key", "add e.g. 'name: my-job' at the top level")
    if not isinstance(name, str):
        top.fail("name", f"must be a string, got {_show(name)}", f'quote it: name: "{name}"')
    if not _NAME_RE.fullmatch(name):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:64] or "my-job"
        top.fail(
            "name",
            f"{name!r} is not a valid job name (it names the Slurm job and the run folder)",
            f"use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit, e.g. {safe!r}",
        )

    backend = top.get("backend")
    if backend is _MISSING:
        backend = "auto"
    if backend not in BACKENDS or not isinstance(backend, str):
        close = difflib.get_close_matches(str(backend), BACKENDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        top.fail(
            "backend",
            f"must be one of {', '.join(BACKENDS)}, got {_show(backend)}",
            f"{hint}auto picks slurm when sbatch is available, else local",
        )

    return Config(
        name=name,
        backend=cast(Backend, backend),
        run_dir=top.string("run_dir", "runs", "runs"),
        resources=_resources(ctx, top),
        slurm=_slurm(ctx, top),
        workload=_workload(ctx, top),
        array=_array(ctx, top),
        monitoring=_monitoring(ctx, top),
        report=_report(ctx, top),
        source=ctx.source,
    )


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------


def _apply_override(ctx: _Ctx, data: Any, text: str) -> None:
    shown = _one_line(text)
    example = "e.g. --set resources.nodes=2"
    key, eq, value_text = text.partition("=")
    key = key.strip()
    if not eq:
        raise ConfigError(f"{ctx.source}: --set {shown}: override has no '='; write KEY.PATH=VALUE, {example}")
    parts = key.split(".")
    if not key or any(not p or p != p.strip() for p in parts):
        raise ConfigError(
            f"{ctx.source}: --set {shown}: {key!r} is not a dotted key path; write KEY.PATH=VALUE, {example}"
        )
    try:
        value = yaml.safe_load(value_text)
    except yaml.YAMLError as exc:
        problem = _one_line(getattr(exc, "problem", None) or str(exc))
        raise ConfigError(
            f"{ctx.source}: --set {shown}: {key}: value is not valid YAML ({problem}); "
            f"quote it, e.g. --set '{key}=\"...\"'"
        ) from None
    if not isinstance(data, dict):
        return  # the top-level error is reported by validation
    ctx.overrides.append((key, text))
    node: dict[Any, Any] = data
    line = 1
    for i, part in enumerate(parts[:-1]):
        line = _key_line(node, part, line)
        child = node.get(part)
        if child is None:
            child = _LineDict()
            child.line = line
            node[part] = child
            if isinstance(node, _LineDict):
                node.key_lines[part] = line
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            ctx.fail(
                line,
                where,
                f"is not a section (it holds {_show(child)}), so --set cannot reach into it",
                f"--set only reaches keys inside mappings, so set the whole value instead, e.g. --set {where}=...",
            )
        node = child
    last = parts[-1]
    if isinstance(node, _LineDict) and last not in node.key_lines:
        node.key_lines[last] = node.line
    node[last] = value


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def parse_config(text: str, source: str = "<string>", overrides: Iterable[str] = ()) -> Config:
    """Validate YAML ``text``; ``source`` names it in error messages."""
    ctx = _Ctx(source)
    data = _read_yaml(text, source)
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'key.path=value' strings, not one string")
    for item in overrides:
        _apply_override(ctx, data, item)
    return _validate(ctx, data)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read, override (``key.sub=value``, value parsed as YAML) and validate a config file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: (file): no such config file; check the path (e.g. configs/train.yaml)") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: (file): is a folder, not a config file; give the path of a .yaml file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: (file): not UTF-8 text ({exc.reason}); save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{source}: (file): cannot read ({exc.strerror}); check the path and permissions") from None
    return parse_config(text, source, overrides)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Validate an already-parsed mapping, e.g. a snapshot made by :meth:`Config.to_dict`."""
    return _validate(_Ctx(source), copy.deepcopy(dict(data)))
