"""Reliability scenarios under load (issue 15, items 2, 3 and 5): `python -m bench.reliability`."""
