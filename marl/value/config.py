"""The config every value-decomposition learner extends (QMIX, VDN, OW/CW-WQMIX, DDN): the
original PyMARL values the DDN paper used are the defaults (profile ``pymarl``; marl/config.py
holds the ``pymarl2`` profile and builds configs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mixer = Literal["qmix", "vdn"]
Optimizer = Literal["rmsprop", "adam"]


@dataclass
class ValueLearnerConfig:
    """Everything a PyMARL-style value learner needs. Episode counts are in episodes, steps in env
    steps (joint transitions summed over parallel environments).

    Choice fields are ``Literal`` types: ``build_config`` refuses any other value, listing the
    valid ones. A subclass may define ``validate()`` for rules across fields or ranges (raising
    ConfigError); ``build_config`` calls it, so a manifest breaking them is refused at validation."""

    profile: Literal["pymarl", "pymarl2"] = "pymarl"  # hyperparameter set: PyMARL (the papers') or PyMARL2 (PROFILES)
    # Agent network (shared parameters): obs ++ last action ++ agent id -> FC -> GRU -> FC.
    hidden_dim: int = 64  # width of the agent network's FC layer and GRU (PyMARL)
    obs_last_action: bool = True  # append the agent's previous action (one-hot) to its input (PyMARL)
    obs_agent_id: bool = True  # append the agent's one-hot index, so shared weights can specialise (PyMARL)
    # Mixer
    mixer: Mixer = "qmix"
    mixing_embed_dim: int = 32  # width of the QMIX mixing network's hidden layer (PyMARL)
    hypernet_embed: int = 64  # hidden width of the two-layer hypernetworks producing the mixing weights
    hypernet_layers: int = 2  # 1: linear hypernetworks; 2: one hidden layer of hypernet_embed (PyMARL)
    # Optimisation
    optimizer: Optimizer = "rmsprop"  # PyMARL: RMSprop; PyMARL2: Adam
    lr: float = 5e-4  # learning rate (PyMARL: 5e-4 RMSprop; PyMARL2: 1e-3 Adam)
    optim_alpha: float = 0.99  # RMSprop smoothing
    optim_eps: float = 1e-5  # optimizer epsilon (PyMARL)
    grad_norm_clip: float = 10.0  # clip the global gradient norm of each update to this (PyMARL)
    gamma: float = 0.99  # discount factor
    td_lambda: float = 0.0  # 0 = one-step targets (PyMARL); PyMARL2 uses 0.6 (0.3 on 6h_vs_8z)
    double_q: bool = True  # Double Q-learning: the online network picks the target's action (PyMARL)
    batch_size: int = 32  # episodes per update
    buffer_size: int = 5000  # episodes
    target_update_interval: int = 200  # episodes between hard target-network updates
    # Acting
    num_envs: int = 1  # parallel environments (PyMARL: 1 episode runner; PyMARL2: 8)
    epsilon_start: float = 1.0  # epsilon-greedy exploration at step 0 (PyMARL)
    epsilon_finish: float = 0.05  # epsilon after the linear anneal (PyMARL)
    epsilon_anneal_time: int = 50_000  # env steps
    # One update for every `num_envs` new episodes (PyMARL trains once per runner batch).
    updates_per_round: int = 1
