"""Schemes: how the server turns stale directions into updates (``registry``).

The registry names every scheme and protocol, what the worker computes, whether it is
realisable, its label and display order; ``corrections`` holds the corrections as
optax-style ``(init, update)`` transformations over pytrees.
"""
