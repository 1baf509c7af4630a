"""Raw YAML data -> a validated :class:`~.model.Config`, section by section, driven by the model.

Keys of plain types (integers, numbers, booleans, strings, each optionally null) are read from
their field's declaration in :mod:`.model`: type, default, bounds and example come from there.
What a declaration cannot say is checked here by hand: the name and backend, the workload's
callable / command / kwargs / env, the array, and slurm's setup and additional_parameters.
The first problem found stops validation with one :class:`~aetherium_hpc.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import keyword
import math
import re
import shlex
import types
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn, Union, cast, get_args, get_origin, get_type_hints

from ..store.options import RELATIONS
from .model import (
    BACKENDS,
    MAX_ARRAY_TASKS,
    ArraySpec,
    Backend,
    Config,
    SlurmSettings,
    Workload,
)
from .problems import Origin, show
from .setting import default_of, setting_of
from .yaml_lines import LineList, item_line, key_line

__all__ = ["validate"]

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

_MISSING: Any = object()


def _keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if setting_of(f) is not None)


def _section_class(hint: Any) -> type | None:
    """The model dataclass behind a Config field's type (``ArraySpec | None`` -> ArraySpec)."""
    for t in (hint, *get_args(hint)):
        if dataclasses.is_dataclass(t) and isinstance(t, type):
            return t
    return None


#: The model's annotations, evaluated (they are strings under ``from __future__ import annotations``).
_type_hints = functools.cache(get_type_hints)
_CONFIG_TYPES = _type_hints(Config)
_CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
#: Section name -> its dataclass, in the model's order.
_SECTION_CLASSES: dict[str, type] = {
    name: cls for name in _keys(Config) if (cls := _section_class(_CONFIG_TYPES[name])) is not None
}
# Key -> sections holding it, for "did you mean" across sections.
_SECTIONS: dict[str, tuple[str, ...]] = {name: _keys(cls) for name, cls in _SECTION_CLASSES.items()}
_TOP_KEYS: tuple[str, ...] = _keys(Config)


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


def _plain_type(hint: Any) -> tuple[type | None, bool]:
    """(int, float, bool or str; None for anything else), and whether null is allowed."""
    args = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    optional = type(None) in args
    rest = [a for a in args if a is not type(None)]
    base = rest[0] if len(rest) == 1 and rest[0] in (int, float, bool, str) else None
    return base, optional


_NOUNS = {int: "an integer", float: "a number", str: "a string"}


class _Section:
    """One mapping of the config: its keys are checked against the model, its values read by type."""

    def __init__(self, origin: Origin, data: Mapping[Any, Any], path: str, line: int, valid: Sequence[str]) -> None:
        self.origin = origin
        self.data = data
        self.path = path
        self.line = getattr(data, "line", line)
        for key in data:
            if key not in valid:
                key_text = str(key)
                origin.fail(
                    self.line_of(key),
                    self.at(key_text),
                    f"unknown key {key_text!r}",
                    f"{_suggest(key_text, valid, path)}valid keys{' in ' + path if path else ''}: " + ", ".join(valid),
                )

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: Any) -> int:
        return key_line(self.data, key, self.line)

    def get(self, key: str) -> Any:
        return self.data.get(key, _MISSING)

    def fail(self, key: str, problem: str, fix: str) -> NoReturn:
        self.origin.fail(self.line_of(key), self.at(key), problem, fix)

    def fail_item(self, key: str, items: Sequence[Any], i: int, problem: str, fix: str) -> NoReturn:
        """Fail at item ``i`` of the list under ``key`` (``key[i]``, on the item's own line)."""
        self.origin.fail(item_line(items, i, self.line_of(key)), f"{self.at(key)}[{i}]", problem, fix)

    # -- keys the model declares completely ----------------------------------------------------

    def build(self, cls: type, **checked: Any) -> Any:
        """``cls(...)`` from this mapping: ``checked`` values as given, every other key read by its declaration."""
        hints = _type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in checked and setting_of(f) is not None:
                checked[f.name] = self.read(f, hints[f.name])
        return cls(**checked)

    def read(self, f: dataclasses.Field[Any], hint: Any) -> Any:
        """The value of a plain-typed key: its default when absent, else checked against type and bounds."""
        key, spec, default = f.name, setting_of(f), default_of(f)
        assert spec is not None
        base, optional = _plain_type(hint)
        if base is None:
            raise TypeError(f"{f.name}: the model's type {hint!r} needs a check of its own in validation.py")
        example = default if spec.example is None else spec.example
        value = self.get(key)
        if value is _MISSING:
            return default
        if value is None and optional:
            return None
        if value is None and base is not bool:
            shown = repr(default) if base is str else default
            self.fail(key, f"must be {_NOUNS[base]}, got null", f"remove the key to use the default {shown}")
        if base is bool:
            if not isinstance(value, bool):
                self.fail(key, f"must be true or false, got {show(value)}", f"write {key}: true or {key}: false")
            return value
        if base is str:
            if not isinstance(value, str):
                self.fail(key, f"must be a string, got {show(value)}", f'quote it: {key}: "{value}" (e.g. "{example}")')
            if not value.strip():
                self.fail(key, "must not be empty", f"remove the key or write {key}: {example}")
            if has_control(value):  # a line break would end an #SBATCH line and start a shell line
                self.fail(key, f"{show(value)}: contains a line break or control character", "write it on one line")
        else:
            if base is int:
                self._check_int(key, value, example)
            else:
                self._check_number(key, value, example)
            for relation, bound in (("gt", spec.gt), ("ge", spec.ge), ("le", spec.le)):
                if bound is not None and not RELATIONS[relation][1](value, bound):
                    self._out_of_bounds(key, value, relation, bound, example)
        if spec.check is not None:  # a check owned elsewhere (the store's options) words its own "problem; fix"
            try:
                spec.check(value)
            except ValueError as exc:
                problem, _, fix = str(exc).partition("; ")
                problem = problem.removeprefix(f"{f.name}: ")
                self.fail(key, f"{show(value)}: {problem}", fix or f"use a value such as {example}")
        return float(value) if base is float and not optional else value

    def _check_int(self, key: str, value: Any, example: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = f"write a whole number such as {example}"
            if isinstance(value, float) and value.is_integer():
                hint = f"write {int(value)} without the decimal point"
            elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
                hint = f"remove the quotes: {key}: {value.strip()}"
            self.fail(key, f"must be an integer, got {show(value)}", hint)

    def _check_number(self, key: str, value: Any, example: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = f"write a number such as {example}"
            if isinstance(value, str):
                hint += " (no quotes, no unit)"
            self.fail(key, f"must be a number, got {show(value)}", hint)
        if not math.isfinite(value):
            self.fail(key, f"must be a finite number, got {value}", f"write a number such as {example}")

    def _out_of_bounds(self, key: str, value: Any, relation: str, bound: float, example: Any) -> NoReturn:
        shown = int(bound) if float(bound).is_integer() else bound  # 1000000, not 1e+06 or 1000000.0
        fix = {
            "gt": f"use a positive value such as {example}"
            if bound == 0
            else f"use a value above {shown}, e.g. {example}",
            "ge": f"use a value of at least {shown}, e.g. {example}",
            "le": f"use a value of at most {shown}, e.g. {example}",
        }[relation]
        self.fail(key, f"must be {RELATIONS[relation][0]} {shown}, got {value}", fix)

    # -- containers the hand-written checks read ---------------------------------------------------

    def mapping(self, key: str) -> Mapping[Any, Any]:
        value = self.get(key)
        if value is _MISSING or value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(
                key,
                f"must be a mapping (key: value lines indented below {key}:), got {show(value)}",
                f"write {key}: followed by indented 'key: value' lines, or {key}: {{}}",
            )
        return value

    def one_of(self, top: _Section, first: str, second: str, both_fix: str, neither_fix: str) -> bool:
        """Whether ``first`` is the one of the two keys this section sets (exactly one must be; null
        is not set, so that ``--set KEY=`` takes one away). ``top``: the mapping holding this section."""
        has = [self.get(key) not in (_MISSING, None) for key in (first, second)]
        if all(has):
            later = second if self.line_of(second) >= self.line_of(first) else first
            self.origin.fail(self.line_of(later), self.path, f"has both {first} and {second}", both_fix)
        if not any(has):
            top.fail(self.path, f"needs {first} or {second}", neither_fix)
        return has[0]

    def filled(self, key: str, kind: type, what: str, fix: str, empty_fix: str) -> Any:
        """The value of ``key``, which must be a ``kind`` (list or Mapping; ``what`` in words) and not empty."""
        value = self.get(key)
        if not isinstance(value, kind):
            self.fail(key, f"must be {what}, got {show(value)}", fix)
        if not value:
            self.fail(key, "must not be empty", empty_fix)
        return value

    def str_mapping(self, key: str, key_re: re.Pattern[str], key_rule: str, example: str) -> dict[str, str]:
        value = self.mapping(key)
        out: dict[str, str] = {}
        for k, v in value.items():
            line = key_line(value, k, self.line_of(key))
            path = f"{self.at(key)}.{k}"
            if not isinstance(k, str) or not key_re.fullmatch(k):
                self.origin.fail(line, path, f"key {show(k)} is not {key_rule}", f"rename it, e.g. {example}")
            if not isinstance(v, str):
                self.origin.fail(line, path, f"must be a string, got {show(v)}", f'quote the value: {k}: "{v}"')
            out[k] = v
        return out


def _section(origin: Origin, top: _Section, key: str) -> _Section:
    value = top.get(key)
    if value is _MISSING or value is None:
        value = {}
    if not isinstance(value, Mapping):
        top.fail(
            key,
            f"must be a section (a mapping of keys), got {show(value)}",
            f"indent its keys below {key}:, or write it inline, e.g. {key}: {{{_SECTIONS[key][0]}: ...}}",
        )
    return _Section(origin, value, key, top.line_of(key), _SECTIONS[key])


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def has_control(text: str) -> bool:
    """Whether ``text`` holds a line break or another control character."""
    return _CONTROL_RE.search(text) is not None


def _check_plain(origin: Origin, value: Any, path: str, line: int) -> Any:
    """Refuse YAML values that would not survive JSON (dates, bytes, sets, non-string keys)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            origin.fail(line, path, f"must be a finite number, got {value}", "use a finite value or a string")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            kline = key_line(value, k, line)
            if not isinstance(k, str):
                origin.fail(kline, f"{path}.{k}", f"key {show(k)} must be a string", f'quote it: "{k}":')
            out[k] = _check_plain(origin, v, f"{path}.{k}", kline)
        return out
    if isinstance(value, (list, tuple)):
        return [_check_plain(origin, v, f"{path}[{i}]", item_line(value, i, line)) for i, v in enumerate(value)]
    origin.fail(line, path, f"unsupported value {show(value)}", 'quote it to make it a string, e.g. "2024-01-01"')


def _check_ident(origin: Origin, key: Any, path: str, line: int, what: str) -> str:
    if not isinstance(key, str) or not _IDENT_RE.fullmatch(key) or keyword.iskeyword(key):
        origin.fail(
            line,
            f"{path}.{key}",
            f"{what} name {show(key)} is not a Python identifier (it becomes a keyword argument)",
            "use letters, digits and underscores, not starting with a digit, e.g. learning_rate",
        )
    return key


def _check_kwargs(origin: Origin, value: Mapping[Any, Any], path: str, line: int, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        kline = key_line(value, k, line)
        out[_check_ident(origin, k, path, kline, what)] = _check_plain(origin, v, f"{path}.{k}", kline)
    return out


def _slurm(origin: Origin, top: _Section) -> SlurmSettings:
    s = _section(origin, top, "slurm")
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
                f"must be a list of shell lines, got {show(setup_raw)}",
                'write setup: ["module load cuda"] or one "- line" per line',
            )
        for i, item in enumerate(setup_raw):
            if not isinstance(item, str):
                s.fail_item("setup", setup_raw, i, f"must be a string, got {show(item)}", "quote the line")
            if has_control(item.replace("\t", " ")):
                s.fail_item("setup", setup_raw, i, f"{show(item)}: contains a line break or control character",
                            "write one shell line per item")  # fmt: skip
            setup.append(item)

    extra: dict[str, str | int | bool] = {}
    for k, v in s.mapping("additional_parameters").items():
        line = key_line(s.get("additional_parameters"), k, s.line_of("additional_parameters"))
        path = f"slurm.additional_parameters.{k}"
        if not isinstance(k, str) or not _SBATCH_KEY_RE.fullmatch(k):
            bare = str(k).lstrip("-")
            origin.fail(
                line,
                path,
                f"key {show(k)} is not an sbatch option name",
                f"write the long option without dashes, e.g. {bare or 'mail_type'}: ... for --{bare or 'mail-type'}",
            )
        owned = _SBATCH_OWNED.get(k.replace("-", "_"))
        if owned:
            origin.fail(line, path, "is set by aetherium-hpc itself", f"use {owned} instead")
        if v is None or isinstance(v, float) or not isinstance(v, (str, int, bool)):
            origin.fail(line, path, f"must be a string, integer or boolean, got {show(v)}", f'quote it: {k}: "{v}"')
        if isinstance(v, str) and has_control(v):
            origin.fail(line, path, f"{show(v)}: contains a line break or control character", "write it on one line")
        extra[k] = v

    return cast(SlurmSettings, s.build(SlurmSettings, setup=tuple(setup), additional_parameters=extra))


def _workload(origin: Origin, top: _Section) -> Workload:
    raw = top.get("workload")
    if raw is _MISSING or raw is None:
        top.fail(
            "workload",
            "missing required section",
            'add workload: with callable: "pkg.module:function" or command: [python, train.py]',
        )
    s = _section(origin, top, "workload")
    func = s.get("callable")
    cmd = s.get("command")
    has_func = s.one_of(top, "callable", "command",
                        "keep exactly one of them (callable for a Python function, command for a program)",
                        'add callable: "pkg.module:function" or command: [python, train.py]')  # fmt: skip

    callable_: str | None = None
    kwargs: dict[str, Any] = {}
    command: tuple[str, ...] | None = None
    if has_func:
        if not isinstance(func, str):
            s.fail("callable", f"must be a string, got {show(func)}", 'write callable: "pkg.module:function"')
        if not _CALLABLE_RE.fullmatch(func.strip()) or any(
            keyword.iskeyword(part) for part in re.split(r"[.:]", func.strip())
        ):
            s.fail(
                "callable",
                f"{func!r} is not of the form 'pkg.module:function'",
                "write the dotted module, a colon, then the function name, e.g. aetherium_hpc.demo.pipeline:run",
            )
        callable_ = func.strip()
        kwargs = _check_kwargs(origin, s.mapping("kwargs"), "workload.kwargs", s.line_of("kwargs"), "argument")
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
        s.filled("command", list, "a list of strings", "write command: [python, train.py]",
                 "write the program and its arguments: command: [python, train.py]")  # fmt: skip
        for i, item in enumerate(cmd):
            if not isinstance(item, str):
                s.fail_item("command", cmd, i, f"must be a string, got {show(item)}", f"quote it: '{item}'")
        command = tuple(cmd)

    env = s.str_mapping("env", _ENV_RE, "a valid environment variable name", "OMP_NUM_THREADS")
    return cast(Workload, s.build(Workload, callable=callable_, kwargs=kwargs, command=command, env=env))


def _array(origin: Origin, top: _Section) -> ArraySpec | None:
    raw = top.get("array")
    if raw is _MISSING or raw is None:
        return None
    s = _section(origin, top, "array")
    params_raw = s.get("params")
    sweep_raw = s.get("sweep")
    has_params = s.one_of(top, "params", "sweep", "keep one: params lists each task, sweep builds every combination",
                          "add params: [{seed: 0}, {seed: 1}] or sweep: {seed: [0, 1]}, or remove array:")  # fmt: skip
    if has_params:
        s.filled("params", list, "a list of mappings (one per task)",
                 "write params: [{seed: 0}, {seed: 1}], or use sweep: for combinations",
                 "list at least one task, e.g. params: [{seed: 0}]")  # fmt: skip
        params: list[dict[str, Any]] = []
        for i, item in enumerate(params_raw):
            if not isinstance(item, Mapping):
                s.fail_item("params", params_raw, i, f"must be a mapping of arguments, got {show(item)}",
                            "write each task as {name: value, ...}, e.g. {seed: 0}")  # fmt: skip
            line = item_line(params_raw, i, s.line_of("params"))
            params.append(_check_kwargs(origin, item, f"array.params[{i}]", line, "parameter"))
        spec = ArraySpec(params=tuple(params))
    else:
        s.filled("sweep", Mapping, "a mapping of name: [values]", "write sweep: {learning_rate: [0.01, 0.1], seed: [0, 1]}",
                 "add at least one name: [values], e.g. sweep: {seed: [0, 1]}")  # fmt: skip
        sweep: dict[str, tuple[Any, ...]] = {}
        for k, values in sweep_raw.items():
            line = key_line(sweep_raw, k, s.line_of("sweep"))
            _check_ident(origin, k, "array.sweep", line, "parameter")
            path = f"array.sweep.{k}"
            if not isinstance(values, list):
                origin.fail(
                    line,
                    path,
                    f"must be a list of values, got {show(values)}",
                    f"write {k}: [{json.dumps(values) if isinstance(values, (int, float, str)) else '...'}]"
                    " even for a single value",
                )
            if not values:
                origin.fail(line, path, "must not be an empty list", f"give at least one value, e.g. {k}: [0]")
            sweep[k] = tuple(_check_plain(origin, values, path, line))
        spec = ArraySpec(sweep=sweep)

    if len(spec) > MAX_ARRAY_TASKS:
        top.fail(
            "array",
            f"describes {len(spec)} tasks, more than {MAX_ARRAY_TASKS}",
            "shrink the sweep (fewer values per key)",
        )
    return spec


def _plain_section(origin: Origin, top: _Section, key: str) -> Any:
    """A section whose keys the model declares completely (resources, monitoring, report)."""
    return _section(origin, top, key).build(_SECTION_CLASSES[key])


def validate(origin: Origin, data: Any) -> Config:
    """The Config of ``data`` (what :func:`.yaml_lines.read_yaml` returned, overrides applied)."""
    if data is None:
        origin.fail(
            1,
            "(root)",
            "the file is empty",
            "write at least 'name: my-job' and a 'workload:' section (see configs/train.yaml)",
        )
    if not isinstance(data, Mapping):
        line = data.line if isinstance(data, LineList) else 1
        origin.fail(
            line,
            "(root)",
            f"the top level must be a mapping of keys, got {show(data)}",
            "start the file with 'name: my-job' and sections like 'workload:' at the left margin",
        )
    top = _Section(origin, data, "", 1, _TOP_KEYS)

    name = top.get("name")
    if name is _MISSING or name is None:
        top.fail("name", "missing required key", "add e.g. 'name: my-job' at the top level")
    if not isinstance(name, str):
        top.fail("name", f"must be a string, got {show(name)}", f'quote it: name: "{name}"')
    if not _NAME_RE.fullmatch(name):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:64] or "my-job"
        top.fail(
            "name",
            f"{name!r} is not a valid job name (it names the Slurm job and the run folder)",
            f"use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit, e.g. {safe!r}",
        )

    backend = top.get("backend")
    if backend is _MISSING:
        backend = default_of(_CONFIG_FIELDS["backend"])
    if backend not in BACKENDS or not isinstance(backend, str):
        close = difflib.get_close_matches(str(backend), BACKENDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        top.fail(
            "backend",
            f"must be one of {', '.join(BACKENDS)}, got {show(backend)}",
            f"{hint}auto picks slurm when sbatch is available, else local",
        )

    return Config(
        name=name,
        backend=cast(Backend, backend),
        run_dir=top.read(_CONFIG_FIELDS["run_dir"], _CONFIG_TYPES["run_dir"]),
        resources=_plain_section(origin, top, "resources"),
        slurm=_slurm(origin, top),
        workload=_workload(origin, top),
        array=_array(origin, top),
        monitoring=_plain_section(origin, top, "monitoring"),
        report=_plain_section(origin, top, "report"),
        source=origin.source,
    )
