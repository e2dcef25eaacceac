"""Kubernetes discovery internals: the object model, the list+watch reflector, the API client and
the pool watch. epp/discovery/kubernetes.py is the public face."""
