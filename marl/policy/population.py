"""Policies outside the learner: saved policy artifacts and pools of frozen snapshots.

* A *policy artifact* (``policy.pt`` in a run dir) is a trained actor with everything needed to
  rebuild it anywhere: algorithm name, its config, the env spec it was trained on and provenance.
  Held-out populations are sets of artifacts; :func:`load_policy` rebuilds any algorithm's actor
  through the registry, so a population can mix algorithms.
* A :class:`PolicyPool` holds frozen snapshots of one learner's actor (self-play's checkpoint pool,
  RPM's memory) as state dicts keyed by integer ids, and builds modules lazily (a small cache), so a
  pool of hundreds of snapshots costs memory for parameters only.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from envs.base import EnvSpec
from marl.policy.config import PolicyLearnerConfig
from marl.run_io import atomic_torch_save

ARTIFACT_FORMAT = 1
POLICY_FILE = "policy.pt"
POLICY_SNAPSHOT_GLOB = "policy_at_*.pt"  # the files policy_file names for fractions below 1


def policy_file(fraction: float) -> str:
    """The artifact of a run's policy at ``fraction`` of its training: ``policy.pt`` for the final one
    (1.0), ``policy_at_0.1.pt`` for the one saved once 10% of the env-step budget was reached."""
    fraction = float(fraction)
    if not 0 < fraction <= 1:
        raise ValueError(f"a policy checkpoint is at a fraction of training in (0, 1], got {fraction!r}")
    return POLICY_FILE if fraction == 1.0 else f"policy_at_{fraction:g}.pt"


_SPEC_KEYS = (
    "family",
    "scenario",
    "n_agents",
    "n_actions",
    "obs_shape",
    "state_shape",
    "extra_obs_shapes",
    "shared_reward",
    "has_won",
)


class PolicyLoadError(RuntimeError):
    pass


def spec_record(spec: EnvSpec) -> dict[str, Any]:
    rec = {k: getattr(spec, k) for k in _SPEC_KEYS}
    rec["obs_shape"], rec["state_shape"] = list(spec.obs_shape), list(spec.state_shape)
    rec["extra_obs_shapes"] = {k: list(v) for k, v in spec.extra_obs_shapes.items()}
    return rec


def spec_from_record(rec: dict[str, Any]) -> EnvSpec:
    return EnvSpec(
        family=rec["family"],
        scenario=rec["scenario"],
        num_envs=1,
        n_agents=rec["n_agents"],
        n_actions=rec["n_actions"],
        obs_shape=tuple(rec["obs_shape"]),
        state_shape=tuple(rec["state_shape"]),
        episode_limit=0,
        obs_dtype=torch.uint8 if len(rec["obs_shape"]) == 3 else torch.float32,
        extra_obs_shapes={k: tuple(v) for k, v in rec["extra_obs_shapes"].items()},
        shared_reward=rec["shared_reward"],
        has_won=rec["has_won"],
    )


# The networks of artifacts written before on-policy's LayerNorms and second FC layer were added
# (commit 9783904 and earlier, e.g. records/reference/bidist_stag_hunt at 600k): what a field absent
# from an artifact's config stood for.
LEGACY_NETWORK = PolicyLearnerConfig.ABSENT_MEANS


def save_policy(
    path: str | Path, algorithm: str, cfg: Any, spec: EnvSpec, actor: nn.Module, info: dict[str, Any] | None = None
) -> None:
    """Write a policy artifact atomically."""
    atomic_torch_save(
        Path(path),
        {
            "format": ARTIFACT_FORMAT,
            "algorithm": algorithm,
            "config": dataclasses.asdict(cfg),
            "spec": spec_record(spec),
            "actor": {k: v.detach().cpu().clone() for k, v in actor.state_dict().items()},
            "info": dict(info or {}),
        },
    )


@dataclasses.dataclass
class LoadedPolicy:
    algorithm: str
    actor: nn.Module
    spec: dict[str, Any]
    info: dict[str, Any]
    path: str


def config_as_built(algo: Any, saved: dict[str, Any]) -> Any:
    """The config a saved actor (policy artifact or training checkpoint) was built with: a field it
    predates takes the value its absence meant (the config class's ``ABSENT_MEANS``), not today's default."""
    return algo.make_config({**getattr(algo.config_cls, "ABSENT_MEANS", {}), **saved})


def load_policy(path: str | Path, device: torch.device | str = "cpu", expect: EnvSpec | None = None) -> LoadedPolicy:
    """Rebuild the actor of a policy artifact (any registered policy algorithm), in eval mode.
    With ``expect``, check that it can act in that environment (same observations and actions)."""
    from marl.registry import get_algorithm

    path = Path(path)
    if not path.is_file():
        raise PolicyLoadError(f"no policy artifact at {path} (a finished policy-learner run writes {POLICY_FILE})")
    try:
        blob = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # a torn or foreign file
        raise PolicyLoadError(
            f"{path} is not a readable policy artifact ({type(exc).__name__}: {exc}); "
            "delete it and re-run the run that produced it"
        ) from exc
    if not isinstance(blob, dict) or blob.get("format") != ARTIFACT_FORMAT:
        raise PolicyLoadError(f"{path} is not a policy artifact of format {ARTIFACT_FORMAT}")
    algo = get_algorithm(blob["algorithm"])
    cfg = config_as_built(algo, blob["config"])
    spec = spec_from_record(blob["spec"])
    if expect is not None:
        mismatch = [
            k
            for k in ("obs_shape", "n_actions", "extra_obs_shapes")
            if _norm(getattr(spec, k)) != _norm(getattr(expect, k))
        ]
        if mismatch:
            raise PolicyLoadError(
                f"policy {path} was trained on {spec.family}/{spec.scenario} and cannot act in "
                f"{expect.family}/{expect.scenario}: different {', '.join(mismatch)}"
            )
    actor = algo.module.build_actor(cfg, spec).to(device)
    actor.load_state_dict(blob["actor"])
    actor.eval()
    for p in actor.parameters():
        p.requires_grad_(False)
    return LoadedPolicy(blob["algorithm"], actor, blob["spec"], blob["info"], str(path))


def _norm(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: tuple(v) for k, v in x.items()}
    return tuple(x) if isinstance(x, (list, tuple)) else x


class PolicyPool:
    """Frozen snapshots of one actor architecture, keyed by increasing integer ids."""

    def __init__(self, build: Callable[[], nn.Module], cache_size: int = 32):
        self.build, self.cache_size = build, cache_size
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.meta: dict[int, dict[str, Any]] = {}
        self.next_id = 0
        self._cache: collections.OrderedDict[int, nn.Module] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self.snapshots)

    def ids(self) -> list[int]:
        return list(self.snapshots)

    def add(self, actor: nn.Module, **meta: Any) -> int:
        sid = self.next_id
        self.next_id += 1
        self.snapshots[sid] = {k: v.detach().clone() for k, v in actor.state_dict().items()}
        self.meta[sid] = dict(meta)
        return sid

    def remove(self, sid: int) -> None:
        self.snapshots.pop(sid)
        self.meta.pop(sid)
        self._cache.pop(sid, None)

    def get(self, sid: int) -> nn.Module:
        module = self._cache.get(sid)
        if module is None:
            # Building initialises parameters from torch's global RNG; a cache miss must not change
            # the random stream (a resumed run rebuilds modules the uninterrupted run had cached).
            with torch.random.fork_rng(devices=[]):
                module = self.build()
            module.load_state_dict(self.snapshots[sid])
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
            self._cache[sid] = module
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(sid)
        return module

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots, "meta": self.meta, "next_id": self.next_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = {int(k): v for k, v in state["snapshots"].items()}
        self.meta = {int(k): copy.deepcopy(v) for k, v in state["meta"].items()}
        self.next_id = int(state["next_id"])
        self._cache.clear()
