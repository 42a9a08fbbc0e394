"""Execution: what trains a run and where its workers run (``registry``).

The run protocol every backend follows (``protocol``), the server's update rule
(``update``) and its role (``server``), the worker role (``worker``), the delay model of
simulated workers (``delays``), a run's state as a checkpoint (``checkpoint``), and the
backends: the sequential reference (``sequential``), the simulation (``sim``), worker
processes (``mp``, with ``supervisor``) and Ray actors (``ray_backend``).
"""
