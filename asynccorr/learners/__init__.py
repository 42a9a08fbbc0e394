"""Learners: what a worker computes from the task (``base``: the interface).

``gpi`` (policy iteration through the differentiable vehicle model, the default), ``a3c``
(model-free advantage actor-critic) and ``q`` (value-based one-step Q, SARSA and n-step Q with a
target network and replay) implement ``base.Learner`` on the networks of ``networks``;
``evaluation`` scores a policy in closed loop, and ``build`` makes the environment, learner and
optimizer of an experiment's config.
"""
