"""The operator on a Kubernetes API server: source (list+watch into the ObjectStore), writer
(server-side apply of waypoint objects, status conditions), leader election.

Only this package imports kubernetes-asyncio. It uses the library for what it does well
(kubeconfig and in-cluster configuration, authentication, TLS, the aiohttp session) and talks
to the API with plain paths and Kubernetes-shaped dicts, the form the store and the
reconciliation core already use, so nothing converts generated model classes back to dicts.
"""
