"""The policy trainer (marl/policy/trainer.py): an interrupted run resumes to exactly the
uninterrupted result, and the policy artifact is written."""

from pathlib import Path

import pytest
import torch

from marl.policy.population import POLICY_FILE, load_policy
from marl.policy.trainer import PolicyTrainer
from marl.trainer import CHECKPOINT, METRICS, Budget, train_run

# The trainer: exact resume, the policy artifact ----------------------------------------------------

SMALL = {
    "num_envs": 4,
    "rollout_length": 20,
    "data_chunk_length": 10,
    "hidden_dim": 16,
    "ppo_epochs": 2,
    "num_mini_batch": 2,
}


def _comparable(rows_):
    return [
        {k: (None if v != v else v) for k, v in r.items() if k not in ("wall_time", "env_steps_per_s")} for r in rows_
    ]


def test_interrupted_policy_run_resumes_to_exactly_the_uninterrupted_result(tmp_path: Path):
    budget = Budget(env_steps=480, eval_interval=160, eval_episodes=4, checkpoint_interval=240)
    args = ("mappo", "smax", "3m", 5, budget)
    reference = train_run(*args, overrides=SMALL, run_dir=tmp_path / "a")

    class Killed(Exception):
        pass

    def kill_after_first_checkpoint(t_env, total, row):
        if t_env > 240:
            raise Killed

    with pytest.raises(Killed):
        train_run(*args, overrides=SMALL, run_dir=tmp_path / "b", progress=kill_after_first_checkpoint)
    resumed_trainer = PolicyTrainer(*args, overrides=SMALL, run_dir=tmp_path / "b")
    assert resumed_trainer.resumed and resumed_trainer.t_env == 240
    resumed = resumed_trainer.run()

    assert [r["env_steps"] for r in reference] == [0, 160, 320, 480]
    assert _comparable(resumed) == _comparable(reference)
    assert reference[-1]["updates"] == 6
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=False)["learner"]
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["learner"]
    for part in ("actor", "critic", "value_norm"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert (tmp_path / "b" / METRICS).read_text().count("\n") == len(reference) + 1

    loaded = load_policy(tmp_path / "a" / POLICY_FILE)
    assert loaded.algorithm == "mappo" and loaded.info["env_steps"] == 480 and loaded.info["seed"] == 5
    for key, value in loaded.actor.state_dict().items():
        assert torch.equal(value, a["actor"][key]), key
    assert not any(p.requires_grad for p in loaded.actor.parameters())
