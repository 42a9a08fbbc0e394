"""Learners: what a worker computes from the task (``base``: the interface).

``gpi`` (policy iteration through the differentiable vehicle model, the default) and
``a3c`` (model-free advantage actor-critic) implement ``base.Learner`` on the policy and
value networks of ``networks``; ``evaluation`` scores a policy in closed loop, and
``build`` makes the environment, learner and optimizer of an experiment's config.
"""
