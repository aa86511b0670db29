"""ztunnel's layout holds: no import circles, and none of the control plane's dependencies.

The folders follow the packet (docs/architecture.md, "ztunnel's layout"); a circle between two
of them would mean one can no longer be read without the other. The graph is grimp's, built
from the source (TYPE_CHECKING imports included: a circle for the type checker is still one).
"""

from __future__ import annotations

import grimp
import pytest

# The control plane's packages: the data path must not pay for importing them.
FORBIDDEN = ("wisp_operator", "kubernetes_asyncio")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("ztunnel", "wisp", include_external_packages=True)


def _packages(graph: grimp.ImportGraph) -> list[str]:
    modules = ["ztunnel", *sorted(graph.find_descendants("ztunnel"))]
    return [m for m in modules if graph.find_children(m)]


def test_the_graph_covers_ztunnels_packages(graph):
    # Guards the tests below against passing on an empty or misread graph.
    assert {"ztunnel.proxy", "ztunnel.inpod", "ztunnel.state"} <= set(_packages(graph))
    assert graph.direct_import_exists(importer="ztunnel.proxy.pod", imported="ztunnel.proxy.outbound")
    assert "trio" in graph.modules


def test_no_import_circle_among_ztunnels_modules_and_packages(graph):
    # Per package, its children (modules and subpackages, each with what lies below it) must
    # import each other without a circle; every circle among ztunnel's modules shows up at the
    # level of the package that holds both ends.
    circles = {package: sorted(tuple(i) for i in graph.nominate_cycle_breakers(package))
               for package in _packages(graph)}
    assert {package: found for package, found in circles.items() if found} == {}


@pytest.mark.parametrize("forbidden", FORBIDDEN)
def test_ztunnel_never_imports_the_control_planes_packages(graph, forbidden):
    if forbidden not in graph.modules:
        return  # nothing in ztunnel or wisp imports it at all
    chain = graph.find_shortest_chain(importer="ztunnel", imported=forbidden, as_packages=True)
    assert chain is None, f"ztunnel imports {forbidden}: {' -> '.join(chain)}"
