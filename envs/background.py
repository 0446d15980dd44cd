"""Hand some agent slots of any batched environment to other policies.

``BackgroundSlotsEnv(env, focal_slots, background_policy)`` is a :class:`BatchedEnv` whose agents
are only ``focal_slots`` of ``env`` (in the order given); the other slots ("background", in
ascending order) are played by ``background_policy``. It serves cross-play: a learner's policy in
the focal slots against a held-out population in the background slots, on any family.

The background policy is called once per ``step``, before the wrapped env steps, as
``background_policy(obs, new_episode)``:

* ``obs``: the wrapped env's latest :class:`StepOutput` restricted to the background slots (every
  per-agent field is ``[B, N_bg, ...]``; per-copy fields such as ``state`` are unchanged);
* ``new_episode``: bool ``[B]``, true for copies whose episode started since the previous call
  (all true after ``reset``), so a recurrent policy can reset its state there;

and returns integer actions ``[B, N_bg]``. The auto-reset contract of ``envs/base.py`` carries over
unchanged: ``reward`` and the ``final_*`` fields are restricted to the focal slots.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch

from envs.base import BatchedEnv, EnvError, StepOutput

BackgroundPolicy = Callable[[StepOutput, torch.Tensor], torch.Tensor]


def restrict_slots(out: StepOutput, slots: torch.Tensor) -> StepOutput:
    """The StepOutput seen by the agents in ``slots`` (index tensor over the agent dimension)."""

    def pick(x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, slots.to(x.device))

    return dataclasses.replace(
        out,
        obs=pick(out.obs),
        avail_actions=pick(out.avail_actions),
        reward=pick(out.reward),
        final_obs=pick(out.final_obs),
        final_avail_actions=pick(out.final_avail_actions),
        obs_extra={k: pick(v) for k, v in out.obs_extra.items()},
        final_obs_extra={k: pick(v) for k, v in out.final_obs_extra.items()},
    )


class BackgroundSlotsEnv(BatchedEnv):
    """``env`` with only ``focal_slots`` exposed; ``background_policy`` plays the other slots."""

    def __init__(
        self,
        env: BatchedEnv,
        focal_slots: Sequence[int],
        background_policy: BackgroundPolicy,
        close_env: bool = True,  # False when the caller keeps using ``env`` after this wrapper
    ):
        n = env.spec.n_agents
        focal = [int(s) for s in focal_slots]
        if not focal or len(set(focal)) != len(focal) or not all(0 <= s < n for s in focal):
            raise EnvError(f"focal_slots must be distinct agent indices in [0, {n}), got {list(focal_slots)}")
        background = [s for s in range(n) if s not in focal]
        if not background:
            raise EnvError(
                f"focal_slots {focal} cover every slot of {env.spec.scenario}; nothing is left to the background policy"
            )
        self.env, self._close_env = env, close_env
        self.device = env.device
        self.focal_slots, self.background_slots = focal, background
        self._focal_idx = torch.tensor(focal, dtype=torch.long, device=env.device)
        self._background_idx = torch.tensor(background, dtype=torch.long, device=env.device)
        self.background_policy = background_policy
        self.spec = dataclasses.replace(
            env.spec,
            n_agents=len(focal),
            options={**env.spec.options, "focal_slots": focal, "background_slots": background},
        )
        self._last: StepOutput | None = None
        self._new_episode = torch.ones(env.spec.num_envs, dtype=torch.bool, device=env.device)

    def reset(self, seed: int | None = None) -> StepOutput:
        self._last = self.env.reset(seed)
        self._new_episode = torch.ones_like(self._last.terminated)
        return restrict_slots(self._last, self._focal_idx)

    def step(self, actions: torch.Tensor) -> StepOutput:
        if self._last is None:
            raise EnvError("call reset() before step()")
        actions = self._check_actions(actions)
        background_actions = self.background_policy(restrict_slots(self._last, self._background_idx), self._new_episode)
        expected = (self.spec.num_envs, len(self.background_slots))
        if tuple(background_actions.shape) != expected:
            raise EnvError(
                f"background_policy must return actions of shape {expected}, got {tuple(background_actions.shape)}"
            )
        full = torch.empty(self.env.spec.num_envs, self.env.spec.n_agents, dtype=torch.long, device=self.device)
        full[:, self._focal_idx] = actions
        full[:, self._background_idx] = background_actions.to(device=self.device, dtype=torch.long)
        self._last = self.env.step(full)
        self._new_episode = self._last.done.clone()
        return restrict_slots(self._last, self._focal_idx)

    def close(self) -> None:
        env = getattr(self, "env", None)
        if env is not None and self._close_env:
            env.close()

    def provenance(self) -> dict[str, Any]:
        return {**self.env.provenance(), "focal_slots": self.focal_slots, "background_slots": self.background_slots}
