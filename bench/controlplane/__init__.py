"""Control plane benchmark: full build, snapshot encoding, one pod change delivered to 100 ztunnels."""
