"""MAPPO (Yu et al., 2022) in self-play: every agent slot is played by the current policy.

Everything MAPPO needs is shared machinery: the recurrent actor and centralised critic
(marl/policy/networks.py), GAE, value normalisation and PPO losses (marl/policy/ppo.py) and the learner
(marl/policy/learner.py). Defaults are MAPPO's (marl/policy/config.py).
"""

from dataclasses import dataclass

from marl.policy.config import PolicyLearnerConfig
from marl.policy.learner import KIND, PolicyLearner, build_actor

__all__ = ["KIND", "Config", "Learner", "build_actor"]


@dataclass
class Config(PolicyLearnerConfig):
    pass


Learner = PolicyLearner
