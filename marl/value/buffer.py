"""Episode replay buffer, preallocated on the training device (PyMARL's EpisodeBatch/ReplayBuffer).

An episode of length L occupies time indices 0..L of the observation-like fields (index L holds
the observation after the last step, i.e. ``final_obs``, used to bootstrap) and 0..L-1 of the
transition fields. ``filled[t]`` marks real transitions; padding beyond L is masked out.

The buffer stores what is small as small (``EpisodeLayout.allocate(..., compact=True)``): actions
as int8 (int16 beyond 127 actions), masks as bool (one byte), observations and states in the
environment's ``obs_storage_dtype`` / ``state_storage_dtype`` where it declares one (Predator-Prey's
0/1 grids: uint8). ``sample`` hands out the usual dtypes (long actions, float observations), with
values equal to those inserted; ``insert`` refuses values the compact dtype cannot hold exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from envs.base import EnvSpec

# Fields with T + 1 time steps (observations) and with T time steps (transitions).
OBS_FIELDS = ("obs", "state", "avail_actions")
TRANSITION_FIELDS = ("actions", "reward", "terminated", "filled")


@dataclass
class EpisodeLayout:
    """Shapes and dtypes of one episode, derived from an environment spec."""

    max_len: int
    n_agents: int
    n_actions: int
    obs_shape: tuple[int, ...]
    state_shape: tuple[int, ...]
    obs_dtype: torch.dtype = torch.float32
    state_dtype: torch.dtype = torch.float32
    obs_storage_dtype: torch.dtype | None = None  # compact storage of obs (None: obs_dtype)
    state_storage_dtype: torch.dtype | None = None

    @classmethod
    def from_spec(cls, spec: EnvSpec) -> "EpisodeLayout":
        return cls(
            spec.episode_limit,
            spec.n_agents,
            spec.n_actions,
            tuple(spec.obs_shape),
            tuple(spec.state_shape),
            spec.obs_dtype,
            spec.state_dtype,
            spec.obs_storage_dtype,
            spec.state_storage_dtype,
        )

    def dtypes(self, compact: bool = False) -> dict[str, torch.dtype]:
        """Per field, the dtype handed out (and staged) or, with ``compact``, the one stored."""
        full = {
            "obs": self.obs_dtype,
            "state": self.state_dtype,
            "avail_actions": torch.bool,
            "actions": torch.long,
            "reward": torch.float32,
            "terminated": torch.bool,
            "filled": torch.bool,
        }
        if not compact:
            return full
        return {
            **full,
            "obs": self.obs_storage_dtype or self.obs_dtype,
            "state": self.state_storage_dtype or self.state_dtype,
            # an action index < A (-1 never reaches the buffer)
            "actions": torch.int8 if self.n_actions <= 127 else torch.int16 if self.n_actions <= 32767 else torch.long,
        }

    def allocate(self, n: int, device: torch.device, compact: bool = False) -> dict[str, torch.Tensor]:
        T, N, A = self.max_len, self.n_agents, self.n_actions
        dt = self.dtypes(compact)
        return {
            "obs": torch.zeros(n, T + 1, N, *self.obs_shape, dtype=dt["obs"], device=device),
            "state": torch.zeros(n, T + 1, *self.state_shape, dtype=dt["state"], device=device),
            # Padding is "all actions available" so maxima over padded steps stay finite.
            "avail_actions": torch.ones(n, T + 1, N, A, dtype=torch.bool, device=device),
            "actions": torch.zeros(n, T, N, dtype=dt["actions"], device=device),
            "reward": torch.zeros(n, T, dtype=torch.float32, device=device),
            "terminated": torch.zeros(n, T, dtype=torch.bool, device=device),
            "filled": torch.zeros(n, T, dtype=torch.bool, device=device),
        }


def leading_rows(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` rows of a contiguous tensor, sharing its memory, over a storage of just those
    rows: what torch.save writes of it is those rows, and nothing is copied to write them."""
    if tensor.dim() == 0 or not tensor.is_contiguous() or tensor.storage_offset() != 0:
        raise ValueError("leading_rows needs a contiguous tensor with rows that starts its storage")
    nbytes = n * tensor.stride(0) * tensor.element_size()
    storage = tensor.untyped_storage()[:nbytes]
    return torch.empty(0, dtype=tensor.dtype, device=tensor.device).set_(
        storage, 0, (n, *tensor.shape[1:]), tensor.stride()
    )


class EpisodeReplayBuffer:
    """Ring buffer of whole episodes, stored in compact dtypes; uniform sampling of episodes."""

    def __init__(self, layout: EpisodeLayout, capacity: int, device: torch.device | str = "cpu"):
        self.layout, self.capacity, self.device = layout, capacity, torch.device(device)
        self.data = layout.allocate(capacity, self.device, compact=True)
        self.out_dtypes = layout.dtypes(compact=False)
        self.lengths = torch.zeros(capacity, dtype=torch.long, device=self.device)
        self.insert_pos = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def insert(self, episodes: dict[str, torch.Tensor], lengths: torch.Tensor) -> None:
        """Insert k complete episodes given as tensors [k, ...] in this buffer's layout."""
        k = int(lengths.shape[0])
        if k == 0:
            return
        if k > self.capacity:  # keep only the newest
            episodes = {name: v[-self.capacity :] for name, v in episodes.items()}
            lengths, k = lengths[-self.capacity :], self.capacity
        idx = (self.insert_pos + torch.arange(k, device=self.device)) % self.capacity
        for name, tensor in self.data.items():
            value = episodes[name].to(self.device)
            stored = value.to(tensor.dtype)
            if stored.dtype != value.dtype and not torch.equal(stored.to(value.dtype), value):
                raise ValueError(
                    f"replay field {name!r}: values not exactly representable in its storage "
                    f"dtype {tensor.dtype} (the environment's spec declares a storage dtype too small)"
                )
            tensor[idx] = stored
        self.lengths[idx] = lengths.to(self.device)
        self.insert_pos = (self.insert_pos + k) % self.capacity
        self.size = min(self.size + k, self.capacity)

    def can_sample(self, batch_size: int) -> bool:
        return self.size >= batch_size

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch of episodes, cut to the longest episode in the batch (PyMARL's max_t_filled),
        drawn without replacement as PyMARL does, and ordered longest first so that recurrent
        networks can skip finished episodes (see marl/value/fast_gru.py)."""
        idx = torch.randperm(self.size, generator=generator, device=self.device)[:batch_size]
        idx = idx[torch.argsort(self.lengths[idx], descending=True, stable=True)]
        t_max = int(self.lengths[idx].max())
        batch = {}
        for name, tensor in self.data.items():
            steps = t_max + 1 if name in OBS_FIELDS else t_max
            batch[name] = tensor[idx, :steps].to(self.out_dtypes[name])
        return batch

    # Checkpointing: only the filled part is saved, and never copied. A full buffer's tensors are
    # saved as they are; a partial one's as its leading rows over a storage cut to those rows
    # (torch.save writes a tensor's whole storage, so a plain view v[:size] would write the whole
    # replay and v[:size].clone() would hold a second one in memory at every early checkpoint).
    def state_dict(self) -> dict:
        def filled(v: torch.Tensor) -> torch.Tensor:
            return v if self.size == self.capacity else leading_rows(v, self.size)

        return {
            "data": {k: filled(v) for k, v in self.data.items()},
            "lengths": filled(self.lengths),
            "insert_pos": self.insert_pos,
            "size": self.size,
        }

    def load_state_dict(self, state: dict) -> None:
        size = state["size"]
        for k, v in state["data"].items():
            self.data[k][:size] = v.to(self.device)
        self.lengths[:size] = state["lengths"].to(self.device)
        self.insert_pos, self.size = state["insert_pos"], size
