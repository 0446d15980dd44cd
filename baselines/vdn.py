"""VDN (Sunehag et al., 2018): Q_tot = sum of per-agent utilities (no state conditioning)."""

from dataclasses import dataclass

from marl.value.config import Mixer, ValueLearnerConfig
from marl.value.learner import QLearner

KIND = "value"


@dataclass
class Config(ValueLearnerConfig):
    mixer: Mixer = "vdn"


Learner = QLearner
