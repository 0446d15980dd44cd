"""Melting Pot (``dm-meltingpot``) substrates and scenarios behind the batched interface.

Scenario names are the 49 substrate names (every player is an agent) followed by the Melting Pot
scenario names (``<substrate>_<k>``: only the focal players are agents; DeepMind's background bots
fill the other slots). Scenarios whose bots are SavedModels need DeepMind's asset bundle; without it
``unavailable_reason`` says what is missing and how to get it. Scenarios that use only ``noop_bot``
run everywhere.

Each of the B copies lives in a worker process (``envs_per_worker`` copies per worker, started with
the ``forkserver`` or ``spawn`` method because the parent holds torch and maybe JAX). Workers read
actions from and write observations to one shared-memory block, so only one-word commands go
through the pipes.

Observations, per copy and player:

* ``obs``: the player's ``RGB`` view, uint8 ``[B, N, H, W, 3]`` (kept uint8 end to end);
* ``obs_extra``: the other per-player observations as float32 ``[B, N, ...]``. By default only the
  keys Melting Pot lets focal players see in scenarios (``meltingpot.scenario.PERMITTED_OBSERVATIONS``,
  e.g. ``INVENTORY``, ``READY_TO_SHOOT``), so a policy trained on a substrate can be evaluated on its
  scenarios; ``all_extra_obs=True`` keeps every key the substrate declares;
* ``state``: the global view ``WORLD.RGB``, uint8 ``[B, H', W', 3]`` (in scenarios it is read from
  the underlying substrate, since focal players never see it).

Rewards are per player (``shared_reward=False``); every action is always available.

Episode ends: Melting Pot episodes end for all players at once (a dm_env LAST step), either by the
substrate's random end (each substrate ends with some probability per 100 frames after a minimum
length) or at its hard cap ``maxEpisodeLengthFrames`` (``spec.episode_limit``). The random end is
part of the task (it plays the role of discounting), so it is ``terminated``; reaching the hard
cap, or a LAST step with a non-zero discount, is ``truncated``. The auto-reset contract is the one
in ``envs/base.py``.

Seeding: a substrate draws its Lua seed from Python's ``random`` module when it is built, and each
later episode of that instance uses the next seed. Each copy gets its own seed derived from
(seed, copy index); its worker seeds ``random`` with it just before building. The seed fixes each
copy's world at reset (layout, spawn) and the bot choices in scenarios. Step-by-step replay is NOT
guaranteed: the dmlab2d engine itself is not bit-reproducible (the same seed and actions in one
process gave one of two different trajectories over 30 steps of prisoners_dilemma, run to run).

Workers are started with ``forkserver`` (or ``spawn``), so a script that creates envs needs the
usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import math
import multiprocessing as mp
import os
import random
import sys
import traceback
import weakref
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch

from envs.base import BackendUnavailableError, BatchedEnv, EnvError, EnvSpec, StepOutput, parse_options
from envs.quiet import quiet_import

FAMILY = "meltingpot"
# ASSETS_VERSION in dm-meltingpot 2.4.1's setup.py; used when the install record is missing.
DEFAULT_ASSETS_VERSION = "2.3.0"
ASSETS_URL = "http://storage.googleapis.com/dm-meltingpot/meltingpot-assets-{version}.tar.gz"
NOOP_BOT = "noop_bot"
_MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class MeltingPotOptions:
    """Options of the Melting Pot family (``make_env(..., **options)``)."""

    # Copies stepped sequentially by one worker process. 0 = auto: the copies are spread over at most
    # as many workers as this process may use CPU cores. Stepping is synchronous (the learner waits),
    # so more processes than cores only add context switches: 8 copies of a 2-player substrate on 2
    # busy cores stepped at 1.8k env steps/s as 8 workers, 3.3k as 2 and 3.8k as 1.
    envs_per_worker: int = 0
    start_method: Literal["forkserver", "spawn"] = "forkserver"  # never 'fork': the parent has torch
    all_extra_obs: bool = False  # True: every per-player observation key, not only the permitted ones
    # Substrates only: end episodes after this many steps (truncated) instead of the substrate's own
    # cap; 0 keeps the substrate's. For short debugging runs and tests.
    max_episode_frames: int = 0
    worker_timeout_s: float = 600.0  # how long to wait for a worker's answer before giving up

    def __post_init__(self) -> None:  # refused where the options are made (manifest validation too)
        if self.envs_per_worker < 0:
            raise EnvError(f"envs_per_worker must be >= 1 (or 0 for auto), got {self.envs_per_worker}")
        if self.max_episode_frames < 0:
            raise EnvError(f"max_episode_frames must be >= 0, got {self.max_episode_frames}")
        if self.worker_timeout_s <= 0:
            raise EnvError(f"worker_timeout_s must be > 0, got {self.worker_timeout_s}")


# Library access (lazy: importing meltingpot imports TensorFlow, ~4 s) ---------------------------


def _meltingpot() -> ModuleType:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's later INFO logs are noise here
    if "meltingpot" not in sys.modules:
        # TensorFlow's native import banner (absl, "Could not find cuda drivers") bypasses the variable.
        with quiet_import():
            import meltingpot  # noqa: F401  (imports bot, scenario, substrate)
    import meltingpot

    return meltingpot


@functools.cache
def _substrates() -> tuple[str, ...]:
    return tuple(sorted(_meltingpot().substrate.SUBSTRATES))


@functools.cache
def _scenarios() -> tuple[str, ...]:
    return tuple(sorted(_meltingpot().scenario.SCENARIOS))


def list_scenarios() -> list[str]:
    """The 49 substrates, then the Melting Pot scenarios (names never collide)."""
    return [*_substrates(), *_scenarios()]


def install_info() -> dict[str, Any]:
    """How dm-meltingpot was installed (written by scripts/setup_venv.sh into the venv)."""
    record = Path(sys.prefix) / "meltingpot-install.json"
    info: dict[str, Any] = {"mode": "unknown", "assets_version": DEFAULT_ASSETS_VERSION}
    if record.is_file():
        info.update(json.loads(record.read_text()))
    return info


def models_root() -> Path:
    """Where dm-meltingpot looks for the bots' SavedModels."""
    _meltingpot()
    from meltingpot.configs import bots as bot_configs

    return Path(bot_configs.MODELS_ROOT)


def _has_saved_model(path: str | Path) -> bool:
    path = Path(path)
    return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()


def _missing_bot_models(scenario: str) -> list[str]:
    """SavedModel directories the scenario's bots need that are not on disk."""
    mp_lib = _meltingpot()
    config = mp_lib.scenario.get_config(scenario)
    bots = sorted(set().union(*config.bots_by_role.values()) - {NOOP_BOT})
    paths = (mp_lib.bot.get_config(name).model_path for name in bots)
    return [p for p in paths if not _has_saved_model(p)]


def unavailable_reason(scenario: str) -> str | None:
    """None for substrates and for scenarios whose bots are installed (or are all noop bots)."""
    if scenario in _substrates():
        return None
    missing = _missing_bot_models(scenario)
    if not missing:
        return None
    version = install_info()["assets_version"]
    return (
        f"Melting Pot scenario {scenario!r} needs the background bots' SavedModels from DeepMind's asset "
        f"bundle meltingpot-assets-{version}, which is not installed here (install mode "
        f"{install_info()['mode']!r}): {len(missing)} model(s) missing, e.g. {missing[0]} (expected under "
        f"{models_root()}). Get them by running in the project's Docker image (it ships the bundle), or "
        f"re-run scripts/setup_venv.sh (after removing dm-meltingpot from .venv) on a machine that can reach "
        f"{ASSETS_URL.format(version=version)}."
    )


def provenance_info(scenario: str | None = None) -> dict[str, Any]:
    root = models_root()
    info = install_info()
    out: dict[str, Any] = {
        "dm_meltingpot": importlib.metadata.version("dm-meltingpot"),
        "dmlab2d": importlib.metadata.version("dmlab2d"),
        "install_mode": info["mode"],
        "assets_version": info["assets_version"],
        "bot_models_present": root.is_dir() and any(root.glob("*/*/saved_model.pb*")),
    }
    if scenario is not None and scenario in _scenarios():
        out["scenario_bots_present"] = not _missing_bot_models(scenario)
    return out


# Static description ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """What the parent and the workers agree on (plain data, pickled once to each worker)."""

    scenario: str
    is_scenario: bool
    n_agents: int
    n_actions: int
    rgb_shape: tuple[int, ...]
    world_shape: tuple[int, ...]
    extra_shapes: dict[str, tuple[int, ...]]
    episode_limit: int


def _layout(name: str, all_extra_obs: bool, max_episode_frames: int) -> _Layout:
    mp_lib = _meltingpot()
    from meltingpot.configs import substrates as substrate_configs

    is_scenario = name in _scenarios()
    substrate_name = mp_lib.scenario.get_config(name).substrate if is_scenario else name
    factory = mp_lib.substrate.get_factory(substrate_name)
    obs_spec = factory.timestep_spec().observation
    if is_scenario:
        n_agents = mp_lib.scenario.get_factory(name).num_focal_players()
    else:
        n_agents = len(factory.default_player_roles())
    permitted = mp_lib.scenario.PERMITTED_OBSERVATIONS
    extra = {
        key: tuple(spec.shape)
        for key, spec in sorted(obs_spec.items())
        if key != "RGB" and not key.startswith("WORLD.") and (key in permitted or (all_extra_obs and not is_scenario))
    }
    if max_episode_frames and is_scenario:
        raise EnvError("max_episode_frames applies to substrates only; scenarios keep Melting Pot's episode rules")
    if max_episode_frames < 0:
        raise EnvError(f"max_episode_frames must be >= 0, got {max_episode_frames}")
    return _Layout(
        scenario=name,
        is_scenario=is_scenario,
        n_agents=n_agents,
        n_actions=int(factory.action_spec().num_values),
        rgb_shape=tuple(obs_spec["RGB"].shape),
        world_shape=tuple(obs_spec["WORLD.RGB"].shape),
        extra_shapes=extra,
        episode_limit=max_episode_frames or _substrate_frame_cap(substrate_configs.get_config(substrate_name)),
    )


def _buffer_fields(layout: _Layout, num_envs: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every shared array: name -> (shape, dtype). ``final_*`` hold the last step of ended episodes."""
    B, N = num_envs, layout.n_agents
    fields: dict[str, tuple[tuple[int, ...], str]] = {
        "actions": ((B, N), "int64"),
        "reward": ((B, N), "float32"),
        "terminated": ((B,), "bool"),
        "truncated": ((B,), "bool"),
    }
    for prefix in ("", "final_"):
        fields[prefix + "obs"] = ((B, N, *layout.rgb_shape), "uint8")
        fields[prefix + "state"] = ((B, *layout.world_shape), "uint8")
        for key, shape in layout.extra_shapes.items():
            fields[f"{prefix}extra:{key}"] = ((B, N, *shape), "float32")
    return fields


def _views(buf: memoryview, fields: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, np.ndarray]:
    views, offset = {}, 0
    for name, (shape, dtype) in fields.items():
        offset = -(-offset // 64) * 64  # cache-line align each array
        size = math.prod(shape) * np.dtype(dtype).itemsize
        views[name] = np.ndarray(shape, dtype=dtype, buffer=buf, offset=offset)
        offset += size
    return views


def _buffer_size(fields: dict[str, tuple[tuple[int, ...], str]]) -> int:
    return sum(math.prod(shape) * np.dtype(dtype).itemsize + 64 for shape, dtype in fields.values())


def copy_seeds(seed: int, num_envs: int) -> list[int]:
    """One independent seed per copy, derived from (seed, copy index)."""
    return [int(np.random.SeedSequence([seed, b]).generate_state(1)[0]) % _MAX_SEED + 1 for b in range(num_envs)]


# Worker side ----------------------------------------------------------------------------------


def _substrate_frame_cap(config: Any) -> int:
    return int(
        config.lab2d_settings_builder(roles=config.default_player_roles, config=config)["maxEpisodeLengthFrames"]
    )


def _capped_settings(builder: Any, max_frames: int, **kwargs: Any) -> Any:
    settings = builder(**kwargs)
    settings["maxEpisodeLengthFrames"] = max_frames
    return settings


class _Copy:
    """One Melting Pot environment inside a worker, writing into row ``b`` of the shared arrays."""

    def __init__(self, layout: _Layout, b: int, views: dict[str, np.ndarray]):
        self.layout, self.b, self.v = layout, b, views
        self.env: Any = None
        self.built_seed: int | None = None
        self.fresh = False  # built with built_seed and not reset yet
        self.steps = 0
        self._substrate_ts: Any = None  # scenarios: latest full substrate timestep (for WORLD.RGB)

    def build(self, seed: int) -> None:
        if self.env is not None:
            self.env.close()
        meltingpot = _meltingpot()  # in a worker process: imported here, quietly

        # The substrate (and the scenario's bot sampling) draw from Python's global `random`.
        random.seed(seed)
        np.random.seed(seed % 2**32)
        name = self.layout.scenario
        if self.layout.is_scenario:
            self.env = meltingpot.scenario.build(name)
            self.env.observables().substrate.timestep.subscribe(self._remember_substrate_ts)
        else:
            config = meltingpot.substrate.get_config(name)
            if self.layout.episode_limit != _substrate_frame_cap(config):
                config.lab2d_settings_builder = functools.partial(
                    _capped_settings, config.lab2d_settings_builder, self.layout.episode_limit
                )
            self.env = meltingpot.substrate.build_from_config(config, roles=config.default_player_roles)
        self.built_seed, self.fresh = seed, True

    def _remember_substrate_ts(self, timestep: Any) -> None:
        self._substrate_ts = timestep

    def reset(self, seed: int | None) -> None:
        if seed is not None and not (self.fresh and seed == self.built_seed):
            self.build(seed)
        self.fresh = False
        self._write(self.env.reset(), prefix="")
        self.steps = 0

    def step(self) -> None:
        v, b = self.v, self.b
        ts = self.env.step(v["actions"][b].tolist())
        self.steps += 1
        v["reward"][b] = ts.reward
        ended = ts.last()
        # Random end (discount 0) = terminal; the hard frame cap or a discounted LAST = time limit.
        truncated = ended and (self.steps >= self.layout.episode_limit or float(ts.discount) != 0.0)
        v["terminated"][b] = ended and not truncated
        v["truncated"][b] = truncated
        if ended:
            self._write(ts, prefix="final_")
            self._write(self.env.reset(), prefix="")
            self.steps = 0
        else:
            self._write(ts, prefix="")

    def _write(self, ts: Any, prefix: str) -> None:
        v, b = self.v, self.b
        obs = v[prefix + "obs"][b]
        for i, player_obs in enumerate(ts.observation):
            obs[i] = player_obs["RGB"]
            for key in self.layout.extra_shapes:
                v[f"{prefix}extra:{key}"][b, i] = player_obs[key]
        world = self._substrate_ts.observation[0] if self.layout.is_scenario else ts.observation[0]
        v[prefix + "state"][b] = world["WORLD.RGB"]

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


def _worker_main(conn: Any, shm_name: str, fields: dict, layout: _Layout, rows: list[int], seeds: list[int]) -> None:
    """Serve reset/step/close commands for the copies in ``rows`` until told to stop or orphaned."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    shm = shared_memory.SharedMemory(name=shm_name)
    views = _views(shm.buf, fields)
    copies = [_Copy(layout, b, views) for b in rows]
    parent = mp.parent_process()
    try:
        try:
            for copy, seed in zip(copies, seeds):
                copy.build(seed)
            conn.send(None)
        except Exception:
            conn.send(traceback.format_exc())
            return
        while True:
            # Poll with a timeout so a worker whose parent died (kill -9) exits by itself.
            if not conn.poll(1.0):
                if parent is not None and not parent.is_alive():
                    return
                continue
            command, arg = conn.recv()
            if command == "close":
                return
            try:
                if command == "step":
                    for copy in copies:
                        copy.step()
                elif command == "reset":
                    for copy, seed in zip(copies, arg or [None] * len(copies)):
                        copy.reset(seed)
                conn.send(None)
            except Exception:
                conn.send(traceback.format_exc())
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the parent went away
    finally:
        for copy in copies:
            try:
                copy.close()
            except Exception:
                pass
        del views
        shm.close()


# Parent side ----------------------------------------------------------------------------------


class _WorkerPool:
    """The worker processes and the shared-memory block; ``close`` is idempotent and also runs at exit."""

    def __init__(self, layout: _Layout, num_envs: int, seeds: list[int], options: MeltingPotOptions):
        if options.start_method not in ("forkserver", "spawn"):
            raise EnvError(f"start_method must be 'forkserver' or 'spawn', got {options.start_method!r}")
        if options.envs_per_worker < 1:
            raise EnvError(f"envs_per_worker must be >= 1 (or 0 for auto), got {options.envs_per_worker}")
        self.timeout = options.worker_timeout_s
        self.fields = _buffer_fields(layout, num_envs)
        self.shm = shared_memory.SharedMemory(create=True, size=_buffer_size(self.fields))
        self.views = _views(self.shm.buf, self.fields)
        self.conns: list[Any] = []
        self.procs: list[mp.process.BaseProcess] = []
        self.closed = False
        ctx = mp.get_context(options.start_method)
        if options.start_method == "forkserver":
            # Import Melting Pot (and TensorFlow, ~5 s) once in the fork server rather than in every
            # worker. Takes effect only if this process has not started its fork server yet.
            ctx.set_forkserver_preload(["envs.meltingpot", "meltingpot"])
        try:
            for start in range(0, num_envs, options.envs_per_worker):
                rows = list(range(start, min(start + options.envs_per_worker, num_envs)))
                parent_end, child_end = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker_main,
                    args=(child_end, self.shm.name, self.fields, layout, rows, [seeds[b] for b in rows]),
                    daemon=True,  # multiprocessing terminates daemons at interpreter exit
                    name=f"meltingpot-worker-{start}",
                )
                proc.start()
                child_end.close()
                self.conns.append(parent_end)
                self.procs.append(proc)
            self._gather("build")
        except BaseException:
            self.close()
            raise

    def broadcast(self, command: str, args: list[Any] | None = None) -> None:
        for i, conn in enumerate(self.conns):
            conn.send((command, None if args is None else args[i]))
        self._gather(command)

    def _gather(self, what: str) -> None:
        errors = []
        for proc, conn in zip(self.procs, self.conns):
            if not conn.poll(self.timeout):
                raise RuntimeError(f"Melting Pot worker {proc.name} did not answer {what!r} within {self.timeout} s")
            try:
                reply = conn.recv()
            except EOFError:
                reply = f"worker exited with code {proc.exitcode}"
            if reply is not None:
                errors.append(f"{proc.name}: {reply}")
        if errors:
            raise RuntimeError(f"Melting Pot {what} failed in a worker:\n" + "\n".join(errors))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for conn in self.conns:
            try:
                conn.send(("close", None))
            except (OSError, BrokenPipeError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():  # only our own children, by handle
                proc.terminate()
                proc.join(timeout=5)
        for conn in self.conns:
            conn.close()
        self.views = {}
        try:
            self.shm.close()
        except BufferError:
            pass  # a caller still holds a view; unlink anyway, the memory goes with the last view
        self.shm.unlink()


def auto_envs_per_worker(num_envs: int) -> int:
    """Copies per worker so that there are at most as many workers as usable CPU cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return math.ceil(num_envs / max(1, cores))


class MeltingPotEnv(BatchedEnv):
    """B copies of a Melting Pot substrate or scenario, stepped in parallel worker processes."""

    def __init__(self, scenario: str, num_envs: int, seed: int, device: torch.device, options: MeltingPotOptions):
        self.device = torch.device(device)
        if options.envs_per_worker == 0:
            options = dataclasses.replace(options, envs_per_worker=auto_envs_per_worker(num_envs))
        self._layout = _layout(scenario, options.all_extra_obs, options.max_episode_frames)
        L = self._layout
        self.spec = EnvSpec(
            family=FAMILY,
            scenario=scenario,
            num_envs=num_envs,
            n_agents=L.n_agents,
            n_actions=L.n_actions,
            obs_shape=L.rgb_shape,
            state_shape=L.world_shape,
            episode_limit=L.episode_limit,
            obs_dtype=torch.uint8,
            state_dtype=torch.uint8,
            extra_obs_shapes=dict(L.extra_shapes),
            shared_reward=False,
            has_won=False,
            options=dataclasses.asdict(options),
        )
        self._pending_seed: int | None = seed  # used by the first reset() without a seed
        self._pool = _WorkerPool(L, num_envs, copy_seeds(seed, num_envs), options)
        self._finalizer = weakref.finalize(self, self._pool.close)
        self._rows_per_worker = options.envs_per_worker
        self._actions = torch.from_numpy(self._pool.views["actions"])
        self._avail = torch.ones(num_envs, L.n_agents, L.n_actions, dtype=torch.bool, device=self.device)

    def reset(self, seed: int | None = None) -> StepOutput:
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        else:
            self._pending_seed = None
        args = None
        if seed is not None:
            seeds = copy_seeds(seed, self.spec.num_envs)
            k = self._rows_per_worker
            args = [seeds[i : i + k] for i in range(0, len(seeds), k)]
        self._pool.broadcast("reset", args)
        B, N = self.spec.num_envs, self.spec.n_agents
        zeros = torch.zeros(B, dtype=torch.bool, device=self.device)
        return self._output(torch.zeros(B, N, device=self.device), zeros, zeros.clone())

    def step(self, actions: torch.Tensor) -> StepOutput:
        actions = self._check_actions(actions)
        if bool(((actions < 0) | (actions >= self.spec.n_actions)).any()):
            raise EnvError(f"actions must lie in [0, {self.spec.n_actions}), got {actions.tolist()}")
        self._actions.copy_(actions.cpu())
        self._pool.broadcast("step")
        v = self._pool.views
        return self._output(self._tensor(v["reward"]), self._tensor(v["terminated"]), self._tensor(v["truncated"]))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        """A copy (the shared arrays are overwritten by the next step) on the env's device. Copies
        are made by numpy: torch's parallel copy would wake its thread pool on cores the workers
        are using, which costs about 1 ms per call."""
        tensor = torch.from_numpy(np.array(array))
        return tensor if self.device.type == "cpu" else tensor.to(self.device)

    def _output(self, reward: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor) -> StepOutput:
        v = self._pool.views
        done = (v["terminated"] | v["truncated"]) if bool(terminated.any() or truncated.any()) else None

        def with_final(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            current = np.array(v[name])
            final = current.copy()
            if done is not None:
                final[done] = v["final_" + name][done]
            as_tensor = torch.from_numpy if self.device.type == "cpu" else lambda a: torch.from_numpy(a).to(self.device)
            return as_tensor(current), as_tensor(final)

        obs, final_obs = with_final("obs")
        state, final_state = with_final("state")
        extra, final_extra = {}, {}
        for key in self.spec.extra_obs_shapes:
            extra[key], final_extra[key] = with_final(f"extra:{key}")
        return StepOutput(
            obs=obs,
            state=state,
            avail_actions=self._avail.clone(),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            won=torch.zeros_like(terminated),
            final_obs=final_obs,
            final_state=final_state,
            final_avail_actions=self._avail.clone(),
            obs_extra=extra,
            final_obs_extra=final_extra,
        )

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            self._actions = None
            pool.close()

    def worker_pids(self) -> list[int]:
        """Process ids of this env's workers (for tests and diagnostics)."""
        return [p.pid for p in self._pool.procs]

    def provenance(self) -> dict[str, Any]:
        return {
            "family": FAMILY,
            "scenario": self.spec.scenario,
            "backend": "dm-meltingpot scenario" if self._layout.is_scenario else "dm-meltingpot substrate",
            **provenance_info(self.spec.scenario),
        }


def scenario_options(scenario: str, options: dict[str, Any]) -> MeltingPotOptions:
    """The user's options, checked (no substrate is built, no worker started)."""
    opts = parse_options(MeltingPotOptions, options, f"meltingpot scenario {scenario!r}")
    if opts.max_episode_frames and scenario in _scenarios():
        raise EnvError("max_episode_frames applies to substrates only; scenarios keep Melting Pot's episode rules")
    return opts


def make(scenario: str, num_envs: int, seed: int, device: torch.device, **options: Any) -> MeltingPotEnv:
    opts = scenario_options(scenario, options)
    reason = unavailable_reason(scenario)
    if reason is not None:  # make_env checks too; this covers direct calls
        raise BackendUnavailableError(reason)
    return MeltingPotEnv(scenario, num_envs, seed, device, opts)
