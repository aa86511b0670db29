"""Connection storms and leaks through ztunnel (issue 15, item 6): `python -m bench.storm`."""
