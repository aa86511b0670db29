"""The cni package's exception hierarchy: one base, one subclass per thing that can go wrong."""

from __future__ import annotations


class CniAgentError(Exception):
    """Base of everything the node agent raises on purpose."""


class CommandFailed(CniAgentError):
    """An external tool (iptables-restore, ipset, nsenter) exited non-zero or could not start."""

    def __init__(self, argv: list[str], returncode: int | None, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr.strip()
        shown = " ".join(argv)
        if returncode is None:
            super().__init__(f"cannot run {shown}: {self.stderr}")
        else:
            super().__init__(f"{shown} exited {returncode}: {self.stderr or 'no error output'}")


class RulesError(CniAgentError):
    """In-pod redirection could not be installed, checked or removed."""


class PodSourceError(CniAgentError):
    """The pod source (control plane) refused a request or sent something unusable."""


class EnrolmentFailed(CniAgentError):
    """A pod could not be (fully) enrolled; the message says which step and why."""
