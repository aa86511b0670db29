"""HTTP/2 as a sans-IO state machine: bytes in, events out; calls in, bytes out.

The part of RFC 9113 that HBONE and the config stream need. It never touches a socket; the
shells that move bytes live in wisp.engine (the data path) and wisp.hbone (CONNECT semantics).
"""
