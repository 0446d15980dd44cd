"""BackgroundSlotsEnv: slot routing, policy calls and done masks, on a real Melting Pot substrate."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("meltingpot")

from envs import EnvError, make_env  # noqa: E402
from envs.background import BackgroundSlotsEnv  # noqa: E402

PD = "prisoners_dilemma_in_the_matrix__repeated"
B = 2


class RecordingPolicy:
    """Plays a fixed action and records what it was shown."""

    def __init__(self, action: int):
        self.action = action
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, obs, new_episode):
        self.calls.append((obs.obs.clone(), obs.reward.clone(), new_episode.clone()))
        return torch.full((obs.obs.shape[0], obs.obs.shape[1]), self.action, dtype=torch.long)


@pytest.fixture(scope="module")
def inner():
    # Episodes of 3 steps so the done mask is exercised; one worker holds both copies.
    e = make_env("meltingpot", PD, num_envs=B, seed=0, max_episode_frames=3, envs_per_worker=2)
    yield e
    e.close()


class SpyEnv:
    """Records the joint actions the wrapper sends to a real env and the outputs it gets back."""

    def __init__(self, env):
        self.env, self.actions, self.outputs = env, [], []

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, seed=None):
        self.outputs.append(self.env.reset(seed))
        return self.outputs[-1]

    def step(self, actions):
        self.actions.append(actions.clone())
        self.outputs.append(self.env.step(actions))
        return self.outputs[-1]


def test_routes_slots_and_calls_policy_once_per_step(inner):
    spy = SpyEnv(inner)
    policy = RecordingPolicy(action=3)
    env = BackgroundSlotsEnv(spy, focal_slots=[1], background_policy=policy, close_env=False)
    assert env.spec.n_agents == 1 and env.spec.n_actions == 8
    assert env.spec.options["focal_slots"] == [1] and env.spec.options["background_slots"] == [0]

    out = env.reset(seed=4)
    assert out.obs.shape == (B, 1, 40, 40, 3) and out.avail_actions.shape == (B, 1, 8)
    assert torch.equal(out.obs[:, 0], spy.outputs[-1].obs[:, 1])
    assert torch.equal(out.obs_extra["INVENTORY"][:, 0], spy.outputs[-1].obs_extra["INVENTORY"][:, 1])
    assert torch.equal(out.state, spy.outputs[-1].state)

    focal_actions = torch.tensor([[5], [6]])
    for t in range(1, 5):
        before = spy.outputs[-1]
        out = env.step(focal_actions)
        after = spy.outputs[-1]
        assert len(policy.calls) == t
        seen_obs, _, new_episode = policy.calls[-1]
        assert torch.equal(seen_obs[:, 0], before.obs[:, 0])  # background sees slot 0, pre-step
        # Joint action: focal actions in slot 1, the policy's in slot 0.
        assert spy.actions[-1].tolist() == [[3, 5], [3, 6]]
        assert torch.equal(out.obs[:, 0], after.obs[:, 1]) and torch.equal(out.reward[:, 0], after.reward[:, 1])
        assert torch.equal(out.final_obs[:, 0], after.final_obs[:, 1])
        assert torch.equal(out.truncated, after.truncated) and torch.equal(out.terminated, after.terminated)
        # new_episode: all true after reset, then the previous step's done mask (episodes of 3).
        assert new_episode.tolist() == ([True] * B if t in (1, 4) else [False] * B)
    assert out.reward.shape == (B, 1)


def test_validation(inner):
    policy = RecordingPolicy(0)
    with pytest.raises(EnvError, match=r"distinct agent indices in \[0, 2\)"):
        BackgroundSlotsEnv(inner, [2], policy, close_env=False)
    with pytest.raises(EnvError, match="distinct"):
        BackgroundSlotsEnv(inner, [1, 1], policy, close_env=False)
    with pytest.raises(EnvError, match="nothing is left"):
        BackgroundSlotsEnv(inner, [0, 1], policy, close_env=False)
    env = BackgroundSlotsEnv(inner, [0], policy, close_env=False)
    with pytest.raises(EnvError, match="reset"):
        env.step(torch.zeros(B, 1, dtype=torch.long))
    env.reset()
    with pytest.raises(EnvError, match="shape"):
        env.step(torch.zeros(B, 2, dtype=torch.long))
    bad = BackgroundSlotsEnv(inner, [0], lambda obs, new: torch.zeros(B, 2, dtype=torch.long), close_env=False)
    bad.reset()
    with pytest.raises(EnvError, match="background_policy must return actions of shape"):
        bad.step(torch.zeros(B, 1, dtype=torch.long))


def test_provenance_names_slots(inner):
    env = BackgroundSlotsEnv(inner, [1], RecordingPolicy(0), close_env=False)
    prov = env.provenance()
    assert prov["focal_slots"] == [1] and prov["background_slots"] == [0]
    assert prov["family"] == "meltingpot"
