"""``x-kubernetes-validations`` rules, evaluated with cel-python (``celpy``).

The API server evaluates each rule with ``self`` bound to the value at the rule's node; a rule
that is false refuses the object with the rule's ``message``. cel-python implements the CEL
standard; the Kubernetes CEL libraries are partly added here: ``url()`` with ``getScheme()``/
``getHost()``, ``isURL()``, ``isIP()`` and ``isCIDR()``. A rule we cannot compile (it uses a
function we do not have) is not enforced; ``unsupported_rules`` lists those, and the first
evaluation logs each once. Rules that read ``oldSelf`` (transition rules) need the previous
object and are not enforced either.

Compiled programs are cached by rule text: the Istio CRDs repeat a handful of rules many times.
"""

from __future__ import annotations

import ipaddress
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


FUNCTIONS = {"url": _url, "getScheme": _get_scheme, "getHost": _get_host, "isURL": _is_url,
             "isIP": _is_ip, "isCIDR": _is_cidr}


@dataclass(frozen=True, slots=True)
class Outcome:
    passed: bool
    error: str = ""  # set when evaluation failed rather than the rule being false


_ENV = celpy.Environment()
_programs: dict[str, Any] = {}
_unsupported: dict[str, str] = {}


def _program(rule: str) -> Any | None:
    if rule in _programs:
        return _programs[rule]
    if rule in _unsupported:
        return None
    if "oldSelf" in rule:
        _unsupported[rule] = "transition rule (reads oldSelf)"
    else:
        try:
            program = _ENV.program(_ENV.compile(rule), functions=FUNCTIONS)
        except Exception as exc:  # noqa: BLE001 - celpy raises several unrelated types for bad rules
            _unsupported[rule] = f"{type(exc).__name__}: {exc}"
        else:
            _programs[rule] = program
            return program
    log.warning("CEL rule not enforced", rule=rule, reason=_unsupported[rule])
    return None


def evaluate(rule: str, value: Any) -> Outcome | None:
    """The rule's outcome for ``value`` as ``self``; None when the rule is not enforced."""
    program = _program(rule)
    if program is None:
        return None
    try:
        result = program.evaluate({"self": celpy.json_to_cel(value)})
    except Exception as exc:  # noqa: BLE001 - an evaluation error refuses the value, as in the API server
        return Outcome(False, str(exc.args[0]) if exc.args else type(exc).__name__)
    if isinstance(result, celpy.CELEvalError):
        return Outcome(False, str(result.args[0]) if result.args else "evaluation error")
    return Outcome(bool(result))


def unsupported_rules() -> dict[str, str]:
    """Rules seen so far that are not enforced, with the reason."""
    return dict(_unsupported)
