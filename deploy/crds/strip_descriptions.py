"""Turn an upstream CRD file into the trimmed form kept in deploy/crds: descriptions out, all else kept.

Usage: ``python deploy/crds/strip_descriptions.py UPSTREAM.yaml OUT.yaml``

What it removes, and only this:
- every ``description`` schema keyword (a *property* named ``description`` is kept: the keyword is
  recognised by where it stands, never under ``properties``);
- ``metadata.creationTimestamp: null`` and the top-level ``status`` that controller-gen writes
  into CRD files (the API server owns both).

Every other key — types, enums, bounds, patterns, ``required``, ``oneOf``/``anyOf``/``not``,
``default``, ``x-kubernetes-*`` including the ``x-kubernetes-validations`` CEL rules — is written
back as it was. Subtrees that occur more than once with the same content (upstream's generator
repeats e.g. the header modifier, the filter and the whole schema of an older served version) are
written once with a YAML anchor and referred to by alias; any YAML reader expands them to the same
data. The script checks that: the output, read back, must equal the input with the removals above,
or it writes nothing and exits 1.

The leading ``#`` comment lines of the input (where it came from, which version) are copied to the
output, followed by a line saying the file was produced by this script.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

# Subtrees smaller than this (as compact JSON) are cheaper written out than referred to.
MIN_SHARED_SIZE = 400
_SCHEMA_MAPS = ("properties", "patternProperties", "definitions")


def strip(value: Any, in_map_of_schemas: bool = False) -> Any:
    """``value`` without ``description`` keywords (keys of a map of schemas are names, kept)."""
    if isinstance(value, dict):
        out = {}
        for key, child in value.items():
            if key == "description" and not in_map_of_schemas:
                continue
            out[key] = strip(child, in_map_of_schemas=(key in _SCHEMA_MAPS and not in_map_of_schemas))
        return out
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def trimmed(doc: dict[str, Any]) -> dict[str, Any]:
    """The CRD as kept: descriptions out, API-server-owned fields out."""
    out = strip(copy.deepcopy(doc))
    meta = out.get("metadata")
    if isinstance(meta, dict) and meta.get("creationTimestamp") is None:
        meta.pop("creationTimestamp", None)
    out.pop("status", None)
    return out


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def share_repeats(doc: Any) -> tuple[Any, dict[int, str]]:
    """``doc`` with equal large subtrees made one object (so the dumper anchors them), and names."""
    counts: dict[str, int] = {}
    paths: dict[str, str] = {}

    def count(value: Any, path: str) -> None:
        if isinstance(value, (dict, list)):
            k = _key(value)
            if len(k) >= MIN_SHARED_SIZE:
                counts[k] = counts.get(k, 0) + 1
                paths.setdefault(k, path)
            children = value.items() if isinstance(value, dict) else enumerate(value)
            for name, child in children:
                count(child, f"{path}.{name}" if isinstance(name, str) else path)

    count(doc, "")
    shared: dict[str, Any] = {}
    names: dict[int, str] = {}

    def rebuild(value: Any) -> Any:
        if not isinstance(value, (dict, list)):
            return value
        k = _key(value)
        if k in shared:
            return shared[k]
        if isinstance(value, dict):
            out: Any = {name: rebuild(child) for name, child in value.items()}
        else:
            out = [rebuild(child) for child in value]
        if counts.get(k, 0) > 1:
            shared[k] = out
            names[id(out)] = _anchor_base(paths[k])
        return out

    return rebuild(doc), names


def _anchor_base(path: str) -> str:
    parts = [p for p in path.split(".") if p and p not in ("properties", "items", "openAPIV3Schema")]
    base = "-".join(parts[-2:]) if parts else "shared"
    return "".join(c if c.isalnum() or c == "-" else "-" for c in base).strip("-").lower() or "shared"


class _Dumper(yaml.SafeDumper):
    """SafeDumper that names anchors after where the shared subtree first appears."""

    anchor_names: dict[int, str] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._node_names: dict[yaml.Node, str] = {}
        self._used: set[str] = set()

    def represent_data(self, data: Any) -> yaml.Node:
        node = super().represent_data(data)
        base = self.anchor_names.get(id(data))
        if base is not None:
            self._node_names[node] = base
        return node

    def generate_anchor(self, node: yaml.Node) -> str:
        # Called only for nodes that really are written more than once, so names stay short.
        base = self._node_names.get(node)
        if base is None:
            return super().generate_anchor(node)
        name, n = base, 2
        while name in self._used:
            name, n = f"{base}-{n}", n + 1
        self._used.add(name)
        return name


def render(doc: dict[str, Any]) -> str:
    shared, names = share_repeats(doc)
    dumper = type("Dumper", (_Dumper,), {"anchor_names": names})
    return yaml.dump(shared, Dumper=dumper, sort_keys=False, width=100, allow_unicode=True)


def leading_comments(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    source, target = Path(argv[1]), Path(argv[2])
    text = source.read_text()
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(docs) != 1 or not isinstance(docs[0], dict) or docs[0].get("kind") != "CustomResourceDefinition":
        print(f"{source}: expected exactly one CustomResourceDefinition", file=sys.stderr)
        return 1
    want = trimmed(docs[0])
    body = render(want)
    if yaml.safe_load(body) != want:
        print(f"{source}: the trimmed file does not read back as the trimmed CRD; nothing written", file=sys.stderr)
        return 1
    header = [*leading_comments(text), "# Trimmed by deploy/crds/strip_descriptions.py (descriptions removed, repeats anchored)."]
    target.write_text("\n".join(header) + "\n" + body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
