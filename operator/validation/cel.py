"""``x-kubernetes-validations`` rules, evaluated with cel-python (``celpy``).

The API server evaluates each rule with ``self`` bound to the value at the rule's node; a rule
that is false refuses the object with the rule's ``message``. cel-python implements the CEL
standard; the Kubernetes CEL libraries are partly added here: ``url()`` with ``getScheme()``/
``getHost()``, ``isURL()``, ``isIP()``, ``isCIDR()`` and the strings library's ``split()``. A
rule we cannot compile (it uses a function we do not have) is not enforced; ``unsupported_rules``
lists those, and the first evaluation logs each once. Rules that read ``oldSelf`` (transition
rules) need the previous object and are not enforced either.

``to_cel`` binds a value as the API server does: an object's declared properties are fields
whose names are escaped as Kubernetes escapes them (``namespace``, a CEL reserved word, is read
as ``self.__namespace__``; ``-``, ``.``, ``/`` and ``__`` become ``__dash__``, ``__dot__``,
``__slash__``, ``__underscores__``), while the keys of a map (``additionalProperties``) stay as
written.

Compiled programs are cached by rule text: the Istio CRDs repeat a handful of rules many times.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import celpy
import structlog
from celpy import celtypes

log = structlog.get_logger("wisp.operator.validation")


class _Url(celtypes.StringType):
    """The value ``url(s)`` returns: the string, with accessors as Kubernetes' URL type."""


def _url(value: Any) -> _Url:
    text = str(value)
    parts = urlsplit(text)
    if not parts.scheme and not parts.netloc:
        raise ValueError(f"URL parse error during conversion from string: {text!r}")
    return _Url(text)


def _get_scheme(value: Any) -> celtypes.StringType:
    return celtypes.StringType(urlsplit(str(value)).scheme)


def _get_host(value: Any) -> celtypes.StringType:
    return celtypes.StringType(urlsplit(str(value)).netloc.rpartition("@")[2])


def _is_url(value: Any) -> celtypes.BoolType:
    parts = urlsplit(str(value))
    return celtypes.BoolType(bool(parts.scheme) or str(value).startswith("/"))


def _is_ip(value: Any) -> celtypes.BoolType:
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _is_cidr(value: Any) -> celtypes.BoolType:
    try:
        ipaddress.ip_network(str(value), strict=True)
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType("/" in str(value))


def _split(value: Any, separator: Any, limit: Any = -1) -> celtypes.ListType:
    """Kubernetes' ``<string>.split(sep[, n])``: Go's strings.SplitN (n < 0: all, n == 0: none)."""
    text, sep, n = str(value), str(separator), int(limit)
    if n == 0:
        return celtypes.ListType([])
    if sep == "":
        parts = list(text)
        if 0 < n < len(parts):
            parts = [*parts[: n - 1], "".join(parts[n - 1:])]
    else:
        parts = text.split(sep) if n < 0 else text.split(sep, n - 1)
    return celtypes.ListType([celtypes.StringType(part) for part in parts])


FUNCTIONS = {"url": _url, "getScheme": _get_scheme, "getHost": _get_host, "isURL": _is_url,
             "isIP": _is_ip, "isCIDR": _is_cidr, "split": _split}

# k8s.io/apiserver/pkg/cel escaping: CEL's reserved words, and the characters a property name may
# hold that a CEL identifier may not.
_RESERVED = frozenset({"true", "false", "null", "in", "as", "break", "const", "continue", "else", "for",
                       "function", "if", "import", "let", "loop", "package", "namespace", "return", "var",
                       "void", "while"})
_EXPAND = re.compile(r"(__|[-./]|[^a-zA-Z0-9\-./_])")
_CEL_IDENT = re.compile(r"^[_a-zA-Z][_a-zA-Z0-9]*$")
_ESCAPES = {"__": "__underscores__", ".": "__dot__", "-": "__dash__", "/": "__slash__"}


def escape_property(name: str) -> str | None:
    """The field name a rule uses for property ``name``; None when no rule can read it."""
    if not name or name[0].isdigit():
        return None
    if name in _RESERVED:
        return f"__{name}__"
    if any(m.group(0) not in _ESCAPES for m in _EXPAND.finditer(name)):
        return None  # a character no escape exists for: the property is not visible to rules
    escaped = _EXPAND.sub(lambda m: _ESCAPES[m.group(0)], name)
    return escaped if _CEL_IDENT.match(escaped) else None


def to_cel(value: Any, schema: dict[str, Any] | None) -> Any:
    """``value`` as a CEL value, shaped by its schema as the API server shapes it."""
    schema = schema or {}
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is not None and not isinstance(extra, dict):
            fields = {}
            for key, child in value.items():
                name = escape_property(key)
                if name is not None:
                    fields[celtypes.StringType(name)] = to_cel(child, props.get(key))
            return celtypes.MapType(fields)
        return celtypes.MapType({celtypes.StringType(k): to_cel(v, extra if isinstance(extra, dict) else None)
                                 for k, v in value.items()})
    if isinstance(value, list):
        items = schema.get("items")
        return celtypes.ListType([to_cel(v, items if isinstance(items, dict) else None) for v in value])
    return celpy.json_to_cel(value)


@dataclass(frozen=True, slots=True)
class Outcome:
    passed: bool
    error: str = ""  # set when evaluation failed rather than the rule being false


_ENV = celpy.Environment()
_programs: dict[str, Any] = {}
_unsupported: dict[str, str] = {}
# cel-python binds functions only when it evaluates, so a rule calling one it lacks would compile
# and then fail on every object; we look at the calls up front and leave such a rule unenforced.
_MACROS = frozenset({"has", "all", "exists", "exists_one", "map", "filter"})
_KNOWN_FUNCTIONS = frozenset(celpy.evaluation.base_functions) | frozenset(FUNCTIONS) | _MACROS


def _called_functions(tree: Any) -> set[str]:
    called = set()
    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg":
            called.add(str(node.children[1]))
        elif node.data == "ident_arg":
            called.add(str(node.children[0]))
    return called


def _program(rule: str) -> Any | None:
    if rule in _programs:
        return _programs[rule]
    if rule in _unsupported:
        return None
    if "oldSelf" in rule:
        _unsupported[rule] = "transition rule (reads oldSelf)"
    else:
        try:
            tree = _ENV.compile(rule)
            missing = sorted(_called_functions(tree) - _KNOWN_FUNCTIONS)
            program = None if missing else _ENV.program(tree, functions=FUNCTIONS)
        except Exception as exc:  # noqa: BLE001 - celpy raises several unrelated types for bad rules
            _unsupported[rule] = f"{type(exc).__name__}: {exc}"
        else:
            if program is not None:
                _programs[rule] = program
                return program
            _unsupported[rule] = "uses functions we do not provide: " + ", ".join(missing)
    log.warning("CEL rule not enforced", rule=rule, reason=_unsupported[rule])
    return None


def evaluate(rule: str, value: Any, schema: dict[str, Any] | None = None) -> Outcome | None:
    """The rule's outcome for ``value`` (at a node of ``schema``) as ``self``; None when not enforced."""
    program = _program(rule)
    if program is None:
        return None
    try:
        result = program.evaluate({"self": to_cel(value, schema)})
    except Exception as exc:  # noqa: BLE001 - an evaluation error refuses the value, as in the API server
        return Outcome(False, str(exc.args[0]) if exc.args else type(exc).__name__)
    if isinstance(result, celpy.CELEvalError):
        return Outcome(False, str(result.args[0]) if result.args else "evaluation error")
    return Outcome(bool(result))


def unsupported_rules() -> dict[str, str]:
    """Rules seen so far that are not enforced, with the reason."""
    return dict(_unsupported)
