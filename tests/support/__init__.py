"""Helpers shared by tests of several components (test doubles, waits, scratch namespaces).

Nothing here ships: the packages under test never import from `tests.support`.
"""
