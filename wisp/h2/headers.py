"""Generic HTTP/2 field validation (RFC 9113 §8.2, §8.3): what makes a header block malformed.

Pure functions over decoded (name, value) pairs. A malformed block is a stream error
PROTOCOL_ERROR (§8.1.1); the connection decides that, these functions only say what is wrong.
What the application means by the fields (a CONNECT authority's port, a status it accepts) is
checked by the application, not here.
"""

from __future__ import annotations

import re

REQUEST = 0
RESPONSE = 1
TRAILERS = 2
_KIND_NAMES = ("request", "response", "trailers")

# §8.2.1: no controls, SP, uppercase, DEL or non-ASCII in names; ':' only as a pseudo-header's
# first character (the pseudo-header branch strips it before this check).
_bad_name = re.compile(r"[\x00-\x20A-Z\x7f-\xff:]").search
# §8.2.1: no NUL, CR or LF in values, no leading or trailing SP/HTAB.
_bad_value = re.compile(r"[\x00\r\n]|^[ \t]|[ \t]$").search
_status = re.compile(r"[0-9]{3}").fullmatch

# §8.2.2: connection-specific fields make a message malformed (te is allowed as "trailers").
CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)

_METHOD, _SCHEME, _PATH, _AUTHORITY, _STATUS = 1, 2, 4, 8, 16
_PSEUDO = (
    {":method": _METHOD, ":scheme": _SCHEME, ":path": _PATH, ":authority": _AUTHORITY},
    {":status": _STATUS},
    {},
)


def problem(headers: list[tuple[str, str]], kind: int) -> str | None:
    """Why `headers` is a malformed block of `kind` (REQUEST, RESPONSE, TRAILERS), or None."""
    allowed = _PSEUDO[kind]
    seen = 0
    regular = False
    method = None
    for name, value in headers:
        if name[:1] == ":":
            if regular:
                return f"pseudo-header {name} after a regular field"
            bit = allowed.get(name)
            if bit is None:
                return f"pseudo-header {name} is not allowed in {_KIND_NAMES[kind]}"
            if seen & bit:
                return f"pseudo-header {name} appears twice"
            seen |= bit
            if bit == _METHOD:
                method = value
            elif bit == _STATUS and not _status(value):
                return f":status {value!r} is not three digits"
            elif bit == _PATH and not value:
                return ":path is empty"
        else:
            regular = True
            if not name:
                return "empty field name"
            if _bad_name(name):
                return f"field name {name!r} has uppercase or forbidden characters"
            if name in CONNECTION_SPECIFIC:
                return f"connection-specific field {name!r}"
            if name == "te" and value != "trailers":
                return "te other than 'trailers'"
        if value and _bad_value(value):
            return f"value of {name!r} has CR, LF, NUL or surrounding whitespace"
    if kind == REQUEST:
        if not seen & _METHOD or not method:
            return "request without :method"
        if method == "CONNECT":
            # §8.5: CONNECT names only :authority; :scheme and :path must be absent.
            if not seen & _AUTHORITY:
                return "CONNECT without :authority"
            if seen & (_SCHEME | _PATH):
                return "CONNECT with :scheme or :path"
        elif seen & (_SCHEME | _PATH) != _SCHEME | _PATH:
            return "request without :scheme or :path"
    elif kind == RESPONSE and not seen & _STATUS:
        return "response without :status"
    return None
