"""The data-path engine: one epoll loop per process that serves every ready socket per pass.

See docs/architecture.md ("The data-path engine") for why it is shaped this way.
"""
