"""A run's budget: how long it trains and how often it is tested and checkpointed. One definition
for the manifests (suites/manifest.py, where every field is given) and the trainers (marl/trainer.py,
where tests may rely on the PyMARL defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Budget:
    env_steps: int  # joint transitions summed over the parallel environments
    eval_interval: int = 10_000  # env steps between tests (PyMARL test_interval)
    eval_episodes: int = 32  # episodes per test (PyMARL test_nepisode)
    checkpoint_interval: int = 100_000  # env steps between checkpoints (results do not depend on it)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
