"""The host policy: what ``lxc-cr host shutdown`` / ``host boot`` do with each container.

The file is YAML, ``/etc/lxc-cr/config.yaml`` (``LXC_CR_CONFIG`` names another), validated
against ``schemas/config.schema.json``.  A missing file means the defaults (checkpoint every
running container and domain).  Example::

    defaults: {action: checkpoint, image_dir: /var/lib/lxc-cr/host, timeout: 120}
    parallelism: 2
    scope: all                  # or "listed": only the names below
    containers:
      web: {action: checkpoint, order: 10}
      db: {action: shutdown}
    domains:
      app: {action: checkpoint}

Settings of one container: the built-in defaults, overridden by ``defaults:``, overridden by
its own entry.  Errors (malformed YAML, an unknown key, a wrong type, a duplicate key) raise
:class:`lxc_cr.errors.BadInput` with one line ``FILE:LINE: problem``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml

from .errors import BadInput

DEFAULT_PATH = "/etc/lxc-cr/config.yaml"
DEFAULT_IMAGE_DIR = "/var/lib/lxc-cr/host"
DEFAULT_URI = "lxc:///system"
DEFAULT_PARALLELISM = 2
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.json"

ACTIONS = ("checkpoint", "shutdown", "ignore")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to do with one container or domain (schema ``$defs/settings``)."""

    action: str = "checkpoint"
    image_dir: str = DEFAULT_IMAGE_DIR
    timeout: float = 120
    compress: bool = False
    order: int = 0
    resume_on_start: bool = True
    start_at_boot: bool = True


_FIELDS = {f.name for f in dataclasses.fields(Settings)}


class Policy:
    """The parsed policy file.  ``path`` is the file read; ``exists`` is False for defaults."""

    def __init__(self, data: dict | None = None, path: str = DEFAULT_PATH, exists: bool = False):
        data = data or {}
        self.path = path
        self.exists = exists
        self._defaults = dataclasses.replace(Settings(), **(data.get("defaults") or {}))
        self._containers: dict[str, dict] = {k: (v or {}) for k, v in
                                             (data.get("containers") or {}).items()}
        self._domains: dict[str, dict] = {k: (v or {}) for k, v in
                                          (data.get("domains") or {}).items()}
        self.parallelism: int = int(data.get("parallelism", DEFAULT_PARALLELISM))
        self.image_dir: str = data.get("image_dir") or self._defaults.image_dir
        self.scope: str = data.get("scope", "all")
        self.lxcpaths: list[str] = list(data.get("lxcpaths") or [])
        self.libvirt_uri: str | None = data.get("libvirt_uri", DEFAULT_URI) or None

    def lxc(self, name: str) -> Settings:
        return dataclasses.replace(self._defaults, **self._containers.get(name, {}))

    def domain(self, name: str) -> Settings:
        return dataclasses.replace(self._defaults, **self._domains.get(name, {}))

    @property
    def listed_containers(self) -> list[str]:
        return list(self._containers)

    @property
    def listed_domains(self) -> list[str]:
        return list(self._domains)

    def covers_lxc(self, name: str) -> bool:
        """Is container NAME in scope (``scope: listed`` limits to the names listed)?"""
        return self.scope == "all" or name in self._containers

    def covers_domain(self, name: str) -> bool:
        return self.scope == "all" or name in self._domains

    def __repr__(self) -> str:
        return f"Policy({self.path!r}, exists={self.exists})"


def config_path(path: str | None = None) -> str:
    return path or os.environ.get("LXC_CR_CONFIG") or DEFAULT_PATH


def load(path: str | None = None) -> Policy:
    """Read and validate the policy file; a missing file gives the defaults."""
    path = config_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return Policy(None, path, exists=False)
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}",
                       path=path) from None
    data, marks = _parse(text, path)
    _validate(data, marks, path)
    return Policy(data, path, exists=True)


# --- YAML with positions --------------------------------------------------------------------

def _line(mark) -> int:
    return mark.line + 1 if mark is not None else 1


def _fail(path: str, mark, problem: str) -> BadInput:
    line = _line(mark)
    return BadInput(f"{path}:{line}: {problem}", path=path, line=line)


def _parse(text: str, path: str) -> tuple[object, dict[tuple, object]]:
    """YAML text -> (plain data, {key path: mark of that node}).

    Mapping keys are kept as their text (a container named ``1`` stays "1"); a duplicate
    key is an error, as it almost always is a typo that would silently drop settings.
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            problem = " ".join(x for x in (e.context, e.problem) if x) or "malformed YAML"
            raise _fail(path, mark, f"malformed YAML: {problem}") from None
        except yaml.YAMLError as e:
            raise BadInput(f"{path}:1: malformed YAML: {str(e).splitlines()[0]}",
                           path=path, line=1) from None
        marks: dict[tuple, object] = {}
        if root is None:
            return None, marks

        def walk(node, where: tuple, depth: int = 0):
            if depth > 20:
                raise _fail(path, node.start_mark, "nested too deeply")
            marks[where] = node.start_mark
            if isinstance(node, yaml.MappingNode):
                loader.flatten_mapping(node)
                out = {}
                for knode, vnode in node.value:
                    if not isinstance(knode, yaml.ScalarNode):
                        raise _fail(path, knode.start_mark, "a key must be a plain name")
                    key = knode.value
                    if key in out:
                        raise _fail(path, knode.start_mark, f"duplicate key {key!r}")
                    marks[where + (key, "<key>")] = knode.start_mark
                    out[key] = walk(vnode, where + (key,), depth + 1)
                return out
            if isinstance(node, yaml.SequenceNode):
                return [walk(n, where + (i,), depth + 1) for i, n in enumerate(node.value)]
            try:
                return loader.construct_object(node, deep=True)
            except yaml.YAMLError as e:
                raise _fail(path, node.start_mark, f"bad value: {e}") from None

        return walk(root, ()), marks
    finally:
        loader.dispose()


# --- validation -----------------------------------------------------------------------------

_schema_cache: dict | None = None


def schema() -> dict:
    global _schema_cache
    if _schema_cache is None:
        with open(SCHEMA_PATH, encoding="utf-8") as f:
            _schema_cache = json.load(f)
    return _schema_cache


def _validate(data, marks: dict, path: str) -> None:
    import jsonschema
    from jsonschema.exceptions import best_match

    validator = jsonschema.Draft202012Validator(schema())
    err = best_match(validator.iter_errors(data))
    if err is None:
        if _FIELDS != set(schema()["$defs"]["settings"]["properties"]):
            raise AssertionError("schemas/config.schema.json and policy.Settings disagree")
        return
    where = tuple(err.absolute_path)
    mark = marks.get(where)
    problem = err.message
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = set(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in allowed]
        if extra:
            mark = marks.get(where + (extra[0], "<key>"), mark)
            problem = f"unknown key {extra[0]!r}"
            if allowed:
                problem += f" (allowed: {', '.join(sorted(allowed))})"
    elif err.validator == "enum":
        problem = f"{err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    name = ".".join(str(p) for p in where)
    if name:
        problem = f"{name}: {problem}"
    raise _fail(path, mark, problem)
