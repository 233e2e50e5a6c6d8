"""The local task suite: versioned tasks over shipped data files and a loopback API.

``build`` generates a version (``python -m insitu.evals.suite.build``); ``v1/``
is the shipped version, loaded with ``insitu.evals.tasks.load_suite("local")``.
"""
