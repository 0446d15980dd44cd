"""QMIX (Rashid et al., 2018): monotonic mixing of per-agent utilities conditioned on the state.

Everything QMIX needs is shared machinery: the recurrent agent, the hypernetwork mixer
(marl/value/networks.py: QMixer) and the TD learner (marl/value/learner.py: QLearner).
"""

from dataclasses import dataclass

from marl.value.config import Mixer, ValueLearnerConfig
from marl.value.learner import QLearner

KIND = "value"


@dataclass
class Config(ValueLearnerConfig):
    mixer: Mixer = "qmix"


Learner = QLearner
