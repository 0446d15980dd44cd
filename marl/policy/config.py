"""Typed configuration of the on-policy learners (MAPPO and the population methods built on it).

Defaults are MAPPO's (Yu et al. 2022, its reference implementation ``on-policy``): Adam 5e-4 for
actor and critic, eps 1e-5, 15 PPO epochs, one minibatch, recurrent chunks of 10 steps, clip 0.2,
entropy 0.01, value normalisation, Huber value loss (delta 10) with value clipping, GAE (0.99, 0.95),
grad-norm clip 10, GRU 64. Choices that are reconstructions (methods.md) are named fields here or in
the algorithm's own Config subclass.

The networks are on-policy's (``r_actor_critic.py`` with its CNN/MLP bases and ``RNNLayer``): two
FC layers under the GRU, LayerNorm on the GRU output (and, for vector observations, on the input
features and after each FC layer), orthogonal GRU weights; ``layer_norm: false`` with
``actor_fc_layers: 1`` gives this project's earlier, smaller architecture (its GRU now starts
orthogonal; it used PyTorch's default). The rate is on-policy's 5e-4 where the Melting Pot line
of work trained with 5e-5 and much larger budgets (set ``lr`` / ``critic_lr`` in a manifest to
follow it); the field comments carry this into the report's method notes (docs/methods.md, "MAPPO").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


@dataclass
class PolicyLearnerConfig:
    """Choice fields are Literal types, checked by marl/config.py build_config (as the value learners')."""

    # A new field's default normally keeps the old behaviour, so a config written before the field
    # existed ran at its default. These fields' defaults changed the networks (commit 1a7a662): a
    # config without them (policy artifacts, run provenance of commit 9783904 and earlier) ran these
    # values. Read by policy loading (marl/policy/population.py) and the reports' configuration checks.
    ABSENT_MEANS: ClassVar[dict[str, Any]] = {"layer_norm": False, "actor_fc_layers": 1}

    profile: Literal["mappo"] = "mappo"  # hyperparameter set: the on-policy MAPPO reference defaults (docs/methods.md)
    # Interaction: each iteration collects rollout_length steps from each of num_envs copies.
    num_envs: int = 8  # parallel environment copies per iteration (MAPPO n_rollout_threads)
    rollout_length: int = 200  # MAPPO's episode_length (steps per copy between updates)
    # Networks (shared by all agents: parameter sharing, as MAPPO)
    hidden_dim: int = 64  # width of the actor and critic FC/GRU layers (MAPPO)
    # RGB observations are average-pooled by this factor before the CNN (Melting Pot sprites are
    # 8x8 pixels, so 8 gives one value per grid cell, as the RPM/Melting Pot baselines did). *choice*
    downsample: int = 8
    # MAPPO's CNNBase: one unpadded 3x3 convolution with hidden_dim // 2 channels, then FC.
    cnn_channels: list[int] = field(default_factory=lambda: [32])
    cnn_kernel: int = 3  # kernel size of the actor's convolutions (MAPPO CNNBase: 3)
    # The critic's CNN over the global view (Melting Pot's WORLD.RGB is 3-10x larger than a player's
    # view): stride 2 and 16 channels keep its cost near the actor's on a CPU (*choice*; MAPPO's
    # would be stride 1, 32 channels, about 15x the cost on a 2-player substrate).
    critic_cnn_channels: list[int] = field(default_factory=lambda: [16])
    critic_cnn_stride: int = 2  # stride of the critic's convolutions (*choice*, see above)
    # on-policy's LayerNorms: on the actor's and critic's GRU output (its RNNLayer, always there)
    # and, for vector observations, on the input features and after each FC layer of the base
    # (use_feature_normalization, MLPLayer); its CNN base has none. false: no LayerNorm anywhere. *choice*
    layer_norm: bool = True
    # FC layers between the actor's input (CNN features or the vector) and its GRU: on-policy's CNN
    # and MLP bases have 2 (layer_N = 1); 1 was this project's earlier actor. The critic has 2 either
    # way (the state's FC, then one joining the agent id). *choice*
    actor_fc_layers: int = 2
    actor_agent_id: bool = False  # actors see only their own observation (decentralised execution)
    critic_agent_id: bool = True  # the centralised critic sees the global state + which agent it values
    orthogonal_init: bool = True  # MAPPO: orthogonal weights (GRU too, zero biases), gain 0.01 on the policy head
    # PPO
    lr: float = 5e-4  # actor Adam learning rate (MAPPO's on-policy default; the Melting Pot line trained with 5e-5, docs/methods.md)
    critic_lr: float = (
        5e-4  # critic Adam learning rate (MAPPO's on-policy default; the Melting Pot line trained with 5e-5)
    )
    adam_eps: float = 1e-5  # Adam epsilon (MAPPO opti_eps)
    ppo_epochs: int = 15  # passes over each rollout (MAPPO's SMAC/Melting Pot setting)
    num_mini_batch: int = 1  # minibatches per epoch (MAPPO)
    data_chunk_length: int = 10  # recurrent training on chunks of this many steps
    clip_param: float = 0.2  # PPO ratio clip epsilon (MAPPO)
    value_loss_coef: float = 1.0  # weight of the critic loss (MAPPO)
    entropy_coef: float = 0.01  # weight of the policy entropy bonus (MAPPO)
    max_grad_norm: float = 10.0  # gradient-norm clip of actor and critic (MAPPO)
    use_huber_loss: bool = True  # Huber instead of squared value loss (MAPPO)
    huber_delta: float = 10.0  # Huber threshold (MAPPO)
    use_clipped_value_loss: bool = True  # PPO-style clipping of the value update (MAPPO)
    use_value_norm: bool = True  # normalise value targets by running mean/std (MAPPO ValueNorm)
    value_norm_beta: float = 0.99999  # decay of ValueNorm's running statistics (MAPPO)
    gamma: float = 0.99  # discount factor (MAPPO)
    gae_lambda: float = 0.95  # GAE lambda (MAPPO)
    # Evaluation: "auto" = greedy on SMAC-like tasks (MAPPO's deterministic eval), sampled actions
    # elsewhere (Melting Pot policies are evaluated as stochastic policies); or "greedy" / "sample".
    eval_actions: Literal["auto", "greedy", "sample"] = "auto"
    eval_num_envs: int = 4  # parallel test copies (Melting Pot copies are processes)
