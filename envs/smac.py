"""StarCraft II micromanagement through ``smacv2`` (oxwhirl/smacv2) and the real game.

Scenarios
---------
* the 23 SMAC maps of smacv2's map registry (``3m`` ... ``2c_vs_64zg``), played with
  ``smacv2.env.StarCraft2Env(map_name=...)``;
* the 15 SMACv2 capability scenarios of smacv2's README (``protoss_5_vs_5`` ... ``zerg_20_vs_23``),
  played with ``smacv2.env.StarCraftCapabilityEnvWrapper`` on the map ``10gen_<race>`` with the
  team and start-position distributions of smacv2's ``examples/configs/sc2_gen_<race>.yaml``.

Nothing here imports smacv2 in the calling process: ``unavailable_reason`` only looks at files and
installed packages, and every game runs in a worker process.

Batching
--------
B copies run in B worker processes (``spawn`` context), one StarCraft II instance each, stepped in
parallel. A worker resets its copy itself when an episode ends, following the auto-reset contract
of ``envs/base.py``. The mapping of smacv2's ``step`` result ``(reward, terminated, info)``:

* ``reward``: smacv2's team reward, given to every agent;
* ``truncated``: ``terminated and info["episode_limit"]`` (the episode limit cut the battle). The
  workers always build smacv2 with ``continuing_episode=True``, its only effect being that smacv2
  reports this flag; pymarl's default (False) reports time-outs as terminal instead, so a learner that
  wants pymarl's convention treats ``done`` as terminal;
* ``terminated``: the battle ended (won, lost, or the game failed and smacv2 restarted it);
* ``won``: ``info["battle_won"]``.

Seeding: copy ``i`` gets its own 32-bit seed derived from ``seed`` (``numpy.random.SeedSequence``),
passed to StarCraft II as its ``random_seed``; it also seeds the worker's ``random`` and
``numpy.random`` and the generators of smacv2's capability distributions (which otherwise draw
from unseeded ``default_rng()``). StarCraft II takes its seed when the game is launched and
episodes follow each other inside one game, so ``reset(seed)`` with an explicit seed relaunches the
game (seconds); ``reset()`` without one just starts the next episode.

Processes
---------
Every process a worker starts (the game) is recorded after each reset, by pid and creation time
(psutil), in the worker and in the parent. Closing stops the game through smacv2, then terminates
and, if needed, kills exactly those recorded processes, never anything found by name. A worker also
exits, after stopping its game, when its parent dies. ``close()`` is idempotent and runs at exit.
Workers are started with ``spawn``, so a script that creates these envs at top level needs the
usual ``if __name__ == "__main__":`` guard.

``SmacEnv(..., env_factory=...)`` replaces smacv2 by another picklable callable with smacv2's API.
It exists for testing the worker pool without the game; ``make`` and ``make_env`` always use smacv2.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import threading
import time
import traceback
import typing
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import psutil
import torch

from envs.base import (
    BackendUnavailableError,
    BatchedEnv,
    EnvError,
    EnvSpec,
    StepOutput,
    UnknownChoiceError,
    parse_options,
)

FAMILY = "smac"

# smacv2's map registry (smacv2/env/starcraft2/maps/smac_maps.py) less its three 10gen_* base maps.
SMAC_MAPS: tuple[str, ...] = (
    "3m", "8m", "25m", "5m_vs_6m", "8m_vs_9m", "10m_vs_11m", "27m_vs_30m", "MMM", "MMM2",
    "2s3z", "3s5z", "3s5z_vs_3s6z", "3s_vs_3z", "3s_vs_4z", "3s_vs_5z", "1c3s5z", "2m_vs_1z",
    "corridor", "6h_vs_8z", "2s_vs_1sc", "so_many_baneling", "bane_vs_bane", "2c_vs_64zg",
)  # fmt: skip


@dataclass(frozen=True)
class _RaceTeams:
    """smacv2's weighted_teams distribution for one race (examples/configs/sc2_gen_<race>.yaml)."""

    unit_types: tuple[str, ...]
    weights: tuple[float, ...]
    exception_unit_types: tuple[str, ...]  # types that may not make up a whole team


RACE_TEAMS: dict[str, _RaceTeams] = {
    "protoss": _RaceTeams(("stalker", "zealot", "colossus"), (0.45, 0.45, 0.1), ()),
    "terran": _RaceTeams(("marine", "marauder", "medivac"), (0.45, 0.45, 0.1), ("medivac",)),
    "zerg": _RaceTeams(("zergling", "baneling", "hydralisk"), (0.45, 0.1, 0.45), ("baneling",)),
}
# (allies, enemies) of smacv2's README scenario table
CAPABILITY_SIZES: tuple[tuple[int, int], ...] = ((5, 5), (10, 10), (20, 20), (10, 11), (20, 23))
CAPABILITY_SCENARIOS: dict[str, tuple[str, int, int]] = {
    f"{race}_{n}_vs_{m}": (race, n, m) for race in RACE_TEAMS for n, m in CAPABILITY_SIZES
}
CAPABILITY_MAP_FILE = "32x32_flat"  # the SC2 map all 10gen_<race> maps are played on
CAPABILITY_MAP_SIZE = 32

# pysc2's difficulty codes as smacv2 takes them ("7" = VeryHard, the SMAC standard)
Difficulty = typing.Literal["1", "2", "3", "4", "5", "6", "7", "8", "9", "A"]
DIFFICULTIES: tuple[str, ...] = typing.get_args(Difficulty)
KNOWN_SC2_BUILDS = {75689: "4.10.0", 75800: "4.10.1"}  # from pysc2's run_configs/lib.py

SMACV2_INSTALL = "pip install git+https://github.com/oxwhirl/smacv2.git"
MAPS_URL = "https://github.com/oxwhirl/smacv2/releases/tag/maps"
_HOW_TO_GET = (
    "Run it inside the project's Docker image (it ships StarCraft II 4.10, smacv2 and the maps), "
    "or install the StarCraft II 4.10 Linux package (SC2.4.10.zip, "
    "https://github.com/Blizzard/s2client-proto#downloads), set SC2PATH to its StarCraftII "
    f"directory, put the SMAC maps (SMAC_Maps.zip, {MAPS_URL}) in $SC2PATH/Maps/SMAC_Maps and "
    f"`{SMACV2_INSTALL}`."
)

# Seconds the parent waits for all workers: starting (spawn + imports), a reset (which may launch
# StarCraft II, slow when B games start at once on few cores), a step, and shutting down.
START_TIMEOUT_S = 300.0
RESET_TIMEOUT_S = 600.0
STEP_TIMEOUT_S = 300.0
CLOSE_TIMEOUT_S = 60.0
_STOP_GRACE_S = 5.0  # between SIGTERM and SIGKILL of a game process


# ---------------------------------------------------------------------------------------------
# Scenarios and options


@dataclass(frozen=True)
class SmacOptions:
    """``smacv2.env.StarCraft2Env`` arguments; defaults are smacv2's (= pymarl's sc2.yaml)."""

    difficulty: Difficulty = "7"  # built-in AI level, one of DIFFICULTIES
    step_mul: int = 8  # game steps per agent step
    move_amount: float = 2.0  # how far a move action goes
    game_version: str = ""  # SC2 version to launch, e.g. "4.10"; "" = newest installed build
    obs_all_health: bool = True
    obs_own_health: bool = True
    obs_last_action: bool = False
    obs_pathing_grid: bool = False
    obs_terrain_height: bool = False
    obs_timestep_number: bool = False
    obs_instead_of_state: bool = False
    state_last_action: bool = True
    state_timestep_number: bool = False
    reward_sparse: bool = False
    reward_only_positive: bool = True
    reward_death_value: float = 10.0
    reward_win: float = 200.0
    reward_defeat: float = 0.0
    reward_negative_scale: float = 0.5
    reward_scale: bool = True
    reward_scale_rate: float = 20.0
    replay_dir: str = ""  # where save_replay writes; "" = $SC2PATH/Replays

    def __post_init__(self) -> None:
        if self.difficulty not in DIFFICULTIES:
            raise EnvError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {self.difficulty!r}")
        if self.step_mul < 1:
            raise EnvError(f"step_mul must be >= 1, got {self.step_mul}")
        if self.move_amount <= 0:
            raise EnvError(f"move_amount must be > 0, got {self.move_amount}")
        if self.reward_scale_rate <= 0:
            raise EnvError(f"reward_scale_rate must be > 0, got {self.reward_scale_rate}")
        if self.reward_defeat > 0:
            raise EnvError(f"reward_defeat must be <= 0 (smacv2's rule), got {self.reward_defeat}")


@dataclass(frozen=True)
class CapabilityOptions(SmacOptions):
    """SMACv2 capability scenarios: defaults are smacv2's examples/configs/sc2_gen_<race>.yaml.

    Their "EPO" variants (sc2_gen_<race>_epo.yaml) are ``prob_obs_enemy=0.0, action_mask=False``.
    """

    obs_own_pos: bool = True
    use_unit_ranges: bool = True
    min_attack_range: int = 2
    conic_fov: bool = False
    num_fov_actions: int = 12
    prob_obs_enemy: float = 1.0
    action_mask: bool = True
    fully_observable: bool = False
    reflect_probability: float = 0.5  # P(reflected start positions), else surrounded

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("prob_obs_enemy", "reflect_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise EnvError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.num_fov_actions < 1:
            raise EnvError(f"num_fov_actions must be >= 1, got {self.num_fov_actions}")


def list_scenarios() -> list[str]:
    return list(SMAC_MAPS) + list(CAPABILITY_SCENARIOS)


def _check_scenario(scenario: str) -> None:
    if scenario not in SMAC_MAPS and scenario not in CAPABILITY_SCENARIOS:
        raise UnknownChoiceError("smac scenario", scenario, list_scenarios())


def options_class(scenario: str) -> type[SmacOptions]:
    _check_scenario(scenario)
    return CapabilityOptions if scenario in CAPABILITY_SCENARIOS else SmacOptions


def scenario_options(scenario: str, options: Mapping[str, Any]) -> SmacOptions:
    """Validate user options for a scenario (without needing the game)."""
    return parse_options(options_class(scenario), options, f"smac scenario {scenario!r}")


def smacv2_kwargs(scenario: str, options: SmacOptions, seed: int) -> dict[str, Any]:
    """The keyword arguments of smacv2's StarCraft2Env / StarCraftCapabilityEnvWrapper."""
    _check_scenario(scenario)
    kwargs = dataclasses.asdict(options)
    kwargs["game_version"] = options.game_version or None
    kwargs["seed"] = seed
    kwargs["continuing_episode"] = True  # so that smacv2 reports info["episode_limit"]
    if scenario in SMAC_MAPS:
        kwargs["map_name"] = scenario
        return kwargs
    race, n_units, n_enemies = CAPABILITY_SCENARIOS[scenario]
    teams = RACE_TEAMS[race]
    reflect = kwargs.pop("reflect_probability")
    kwargs["map_name"] = f"10gen_{race}"
    kwargs["capability_config"] = {
        "n_units": n_units,
        "n_enemies": n_enemies,
        "team_gen": {
            "dist_type": "weighted_teams",
            "unit_types": list(teams.unit_types),
            "weights": list(teams.weights),
            "exception_unit_types": list(teams.exception_unit_types),
            "observe": True,
        },
        "start_positions": {
            "dist_type": "surrounded_and_reflect",
            "p": reflect,
            "map_x": CAPABILITY_MAP_SIZE,
            "map_y": CAPABILITY_MAP_SIZE,
        },
    }
    return kwargs


# ---------------------------------------------------------------------------------------------
# Where the backend lives, and what is missing


def sc2_path() -> Path:
    """StarCraft II's directory as pysc2 finds it on Linux: $SC2PATH, else ~/StarCraftII."""
    return Path(os.path.expanduser(os.environ.get("SC2PATH") or "~/StarCraftII"))


def map_file(scenario: str) -> Path:
    """The scenario's map file, relative to $SC2PATH/Maps."""
    _check_scenario(scenario)
    name = scenario if scenario in SMAC_MAPS else CAPABILITY_MAP_FILE
    return Path("SMAC_Maps") / f"{name}.SC2Map"


def sc2_builds(root: Path) -> list[int]:
    """Builds installed under root/Versions (Base<build>/SC2_x64), ascending."""
    versions = root / "Versions"
    if not versions.is_dir():
        return []
    return sorted(
        int(d.name[4:])
        for d in versions.iterdir()
        if d.name.startswith("Base") and d.name[4:].isdigit() and (d / "SC2_x64").is_file()
    )


def unavailable_reason(scenario: str) -> str | None:
    """None when smacv2, StarCraft II and the scenario's map are present; else what is missing."""
    _check_scenario(scenario)
    problems = []
    missing = [name for name in ("smacv2", "pysc2") if importlib.util.find_spec(name) is None]
    if missing:
        problems.append(
            f"the Python package(s) {', '.join(missing)} are not installed "
            f"(smacv2 is not on PyPI: `{SMACV2_INSTALL}`, which brings pysc2)"
        )
    root = sc2_path()
    where = (
        f"SC2PATH={os.environ['SC2PATH']}"
        if os.environ.get("SC2PATH")
        else "SC2PATH is not set, so smacv2's default ~/StarCraftII was used"
    )
    if not root.is_dir():
        problems.append(f"StarCraft II is not installed at {root} ({where})")
    else:
        if not sc2_builds(root):
            problems.append(f"no StarCraft II binary under {root / 'Versions'} (expected Base<build>/SC2_x64; {where})")
        path = root / "Maps" / map_file(scenario)
        if not path.is_file():
            problems.append(f"the map file {path} is missing (SMAC_Maps.zip from {MAPS_URL})")
    if not problems:
        return None
    return f"smac scenario {scenario!r} cannot run on this machine: " + "; ".join(problems) + ". " + _HOW_TO_GET


def backend_versions() -> dict[str, Any]:
    """Installed smacv2 (version, git commit when pip recorded one), pysc2 and SC2 build."""
    info: dict[str, Any] = {}
    for dist_name, key in (("smacv2", "smacv2"), ("pysc2", "pysc2"), ("s2clientprotocol", "s2clientprotocol")):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            info[f"{key}_version"] = None
            continue
        info[f"{key}_version"] = dist.version
        direct_url = dist.read_text("direct_url.json")  # written by `pip install git+...`
        if key == "smacv2" and direct_url:
            url = json.loads(direct_url)
            info["smacv2_url"] = url.get("url")
            info["smacv2_commit"] = url.get("vcs_info", {}).get("commit_id")
    root = sc2_path()
    builds = sc2_builds(root)
    info["sc2_path"] = str(root)
    info["sc2_builds"] = builds
    info["sc2_build"] = builds[-1] if builds else None  # the one pysc2 launches by default
    info["sc2_version"] = KNOWN_SC2_BUILDS.get(builds[-1]) if builds else None
    return info


# ---------------------------------------------------------------------------------------------
# The production factory (runs in a worker process)


def smacv2_factory(kwargs: dict[str, Any]) -> Any:
    """Build one smacv2 environment from ``smacv2_kwargs``; the game launches on its first reset."""
    from absl import flags

    # pysc2 reads absl flags (sc2_run_config, ...); outside absl.app they must be marked parsed.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    if "capability_config" not in kwargs:
        from smacv2.env import StarCraft2Env

        return StarCraft2Env(**kwargs)
    from smacv2.env import StarCraftCapabilityEnvWrapper

    env = StarCraftCapabilityEnvWrapper(**kwargs)
    # smacv2's distributions draw from unseeded numpy Generators: reseed them from the copy's seed.
    seeds = np.random.SeedSequence(kwargs["seed"])
    for distribution in env.env_key_to_distribution_map.values():
        _reseed_generators(distribution, seeds, depth=3)
    return env


def _reseed_generators(obj: Any, seeds: np.random.SeedSequence, depth: int) -> None:
    """Replace every numpy Generator attribute of obj (and of nested distributions) by a seeded one."""
    for name, value in sorted(vars(obj).items()):
        if isinstance(value, np.random.Generator):
            setattr(obj, name, np.random.default_rng(seeds.spawn(1)[0]))
        elif depth > 0 and hasattr(value, "generate") and hasattr(value, "__dict__"):
            _reseed_generators(value, seeds, depth - 1)


# ---------------------------------------------------------------------------------------------
# Worker process


def _process_key(proc: psutil.Process) -> tuple[int, float]:
    return proc.pid, proc.create_time()


def _stop_processes(procs: Sequence[psutil.Process]) -> None:
    """SIGTERM, wait, then SIGKILL exactly these processes (psutil refuses reused pids)."""
    alive = []
    for proc in procs:
        try:
            proc.terminate()
            alive.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    _, alive = psutil.wait_procs(alive, timeout=_STOP_GRACE_S)
    for proc in alive:
        try:
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    psutil.wait_procs(alive, timeout=_STOP_GRACE_S)


class _Worker:
    """One copy, inside its worker process: the smacv2 env and the processes it started."""

    def __init__(self, factory: Callable[[dict[str, Any]], Any], kwargs: dict[str, Any]):
        self.factory = factory
        self.kwargs = dict(kwargs)
        self.env: Any = None
        self.launched = False  # whether the current env has been reset (i.e. started its game)
        self.game_procs: dict[tuple[int, float], psutil.Process] = {}
        self.procs_lock = threading.Lock()  # the orphan watchdog thread reads game_procs too
        self.me = psutil.Process()

    def build(self, seed: int) -> None:
        self.kwargs["seed"] = seed
        random.seed(seed)
        np.random.seed(seed)
        self.env = self.factory(dict(self.kwargs))
        self.launched = False

    def record_children(self) -> list[tuple[int, float]]:
        """Add the worker's current descendants to game_procs, drop the ones that ended."""
        children = self.me.children(recursive=True)
        with self.procs_lock:
            for proc in children:
                try:
                    self.game_procs.setdefault(_process_key(proc), proc)
                except psutil.NoSuchProcess:
                    pass
            for key, proc in list(self.game_procs.items()):
                if not proc.is_running():
                    del self.game_procs[key]
            return list(self.game_procs)

    def observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obs = np.asarray(self.env.get_obs(), dtype=np.float32)
        state = np.asarray(self.env.get_state(), dtype=np.float32)
        avail = np.asarray(self.env.get_avail_actions()).astype(bool)
        return obs, state, avail

    def reset(self, seed: int | None) -> tuple[Any, list[tuple[int, float]]]:
        if seed is not None and (self.launched or seed != self.kwargs["seed"]):
            self.stop_game()  # the game takes its seed at launch: relaunch it
            self.build(seed)
        self.env.reset()
        self.launched = True
        return self.observe(), self.record_children()

    def step(self, actions: np.ndarray) -> tuple[Any, ...]:
        reward, ended, info = self.env.step(actions.tolist())
        truncated = bool(ended and info.get("episode_limit", False))
        terminated = bool(ended) and not truncated
        won = bool(ended and info.get("battle_won", False))
        observation = self.observe()
        final, procs = None, None
        if ended:
            final = observation
            observation, procs = self.reset(None)
        return float(reward), terminated, truncated, won, observation, final, procs

    def stop_game(self) -> None:
        """Close the env, then stop whatever it started that is still running."""
        self.record_children()
        if self.env is not None:
            try:
                self.env.close()
            except Exception:
                pass  # the processes are stopped below anyway
            self.env = None
        self.kill_game_processes()

    def kill_game_processes(self) -> None:
        try:
            self.record_children()
        except psutil.Error:
            pass
        with self.procs_lock:
            procs = list(self.game_procs.values())
            self.game_procs.clear()
        _stop_processes(procs)


def _exit_when_orphaned(parent_pid: int, worker: _Worker) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            worker.kill_game_processes()
            os._exit(1)


def _worker_main(
    conn: Connection, factory: Callable[[dict[str, Any]], Any], kwargs: dict[str, Any], parent_pid: int
) -> None:
    # Ctrl-C reaches the whole process group: let the parent decide when games stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = _Worker(factory, kwargs)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid, worker), daemon=True).start()
    try:
        try:
            worker.build(kwargs["seed"])
            conn.send(("ok", worker.env.get_env_info()))
        except Exception:
            conn.send(("error", traceback.format_exc()))
            return
        while True:
            command, argument = conn.recv()
            if command == "close":
                return
            try:
                reply = worker.reset(argument) if command == "reset" else worker.step(argument)
            except Exception:
                conn.send(("error", traceback.format_exc()))
            else:
                conn.send(("ok", reply))
    except (EOFError, OSError):
        pass  # the parent is gone
    except BaseException:
        traceback.print_exc()  # the parent sees the worker die and reports it
    finally:
        worker.stop_game()
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        # Everything this worker owns is released: skip the interpreter's teardown (seconds, with
        # torch imported) so that close() returns promptly.
        os._exit(0)


# ---------------------------------------------------------------------------------------------
# The batched environment (parent process)

_LIVE_ENVS: "weakref.WeakSet[SmacEnv]" = weakref.WeakSet()


@atexit.register
def _close_live_envs() -> None:
    for env in list(_LIVE_ENVS):
        env.close()


def copy_seeds(seed: int, num_envs: int) -> list[int]:
    """Independent 32-bit game seeds for the copies (StarCraft II's random_seed is a uint32)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise EnvError(f"seed must be a non-negative integer, got {seed!r}")
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(num_envs)]


class SmacEnv(BatchedEnv):
    """B copies of a SMAC / SMACv2 scenario, one StarCraft II game per worker process.

    ``env_factory`` (tests only): a picklable callable ``kwargs -> env`` used instead of smacv2 in
    the workers; the env must offer smacv2's methods (get_env_info, reset, get_obs, get_state,
    get_avail_actions, step, close). When None (always, outside tests), smacv2 is used and the
    backend must be available.
    """

    def __init__(
        self,
        scenario: str,
        num_envs: int = 1,
        seed: int = 0,
        device: str | torch.device = "cpu",
        options: SmacOptions | None = None,
        *,
        env_factory: Callable[[dict[str, Any]], Any] | None = None,
    ):
        self._conns: list[Connection] = []
        self._workers: list[Any] = []
        # pid + creation time of every game process of each worker, as last reported
        self._game_procs: list[list[tuple[int, float]]] = []
        self._closed = False
        self._broken: str | None = None
        options = options if options is not None else options_class(scenario)()
        if not isinstance(options, options_class(scenario)):
            raise EnvError(f"options for {scenario!r} must be {options_class(scenario).__name__}")
        if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
            raise EnvError(f"num_envs must be a positive integer, got {num_envs!r}")
        seeds = copy_seeds(seed, num_envs)
        if env_factory is None:
            reason = unavailable_reason(scenario)
            if reason is not None:
                raise BackendUnavailableError(reason)
            env_factory = smacv2_factory
        self.device = torch.device(device)
        self.scenario = scenario
        self.options = options
        self._uses_smacv2 = env_factory is smacv2_factory
        self._kwargs = smacv2_kwargs(scenario, options, seed)
        self._game_procs = [[] for _ in range(num_envs)]
        self._avail: torch.Tensor | None = None

        ctx = mp.get_context("spawn")
        try:
            for copy_seed in seeds:
                parent_conn, child_conn = ctx.Pipe()
                kwargs = dict(self._kwargs, seed=copy_seed)
                worker = ctx.Process(
                    target=_worker_main,
                    args=(child_conn, env_factory, kwargs, os.getpid()),
                    name=f"smac-{scenario}-{len(self._workers)}",
                    daemon=True,
                )
                worker.start()
                child_conn.close()
                self._conns.append(parent_conn)
                self._workers.append(worker)
            infos = self._gather("start", START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        _LIVE_ENVS.add(self)
        info = infos[0]  # the copies differ only in their seeds
        self.spec = EnvSpec(
            family=FAMILY,
            scenario=scenario,
            num_envs=num_envs,
            n_agents=int(info["n_agents"]),
            n_actions=int(info["n_actions"]),
            obs_shape=(int(info["obs_shape"]),),
            state_shape=(int(info["state_shape"]),),
            episode_limit=int(info["episode_limit"]),
            shared_reward=True,
            has_won=True,
            options=dataclasses.asdict(options),
        )

    # -- messaging ------------------------------------------------------------------------------

    def _usable(self) -> None:
        if self._closed:
            raise EnvError("this smac environment is closed")
        if self._broken is not None:
            raise RuntimeError(
                f"this smac environment is unusable after a worker failure; make a new one. {self._broken}"
            )

    def _send_all(self, messages: Sequence[tuple[str, Any]]) -> None:
        for i, (conn, message) in enumerate(zip(self._conns, messages)):
            try:
                conn.send(message)
            except OSError as err:
                self._broken = f"worker {i} (pid {self._workers[i].pid}) is gone: {err}"
                raise RuntimeError(self._broken) from err

    def _gather(self, what: str, timeout_s: float) -> list[Any]:
        """One reply from every worker; any failure marks the env broken and raises with details."""
        deadline = time.monotonic() + timeout_s
        replies, errors = [], []
        for i, conn in enumerate(self._conns):
            worker = self._workers[i]
            try:
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    errors.append(f"worker {i} (pid {worker.pid}) did not answer {what} within {timeout_s:.0f} s")
                    continue
                status, payload = conn.recv()
            except (EOFError, OSError):
                worker.join(1.0)
                errors.append(f"worker {i} (pid {worker.pid}) died during {what} (exit code {worker.exitcode})")
                continue
            if status == "error":
                errors.append(f"worker {i} failed during {what}:\n{payload}")
            else:
                replies.append(payload)
        if errors:
            self._broken = "\n".join(errors)
            raise RuntimeError(f"smac {self.scenario}: " + self._broken)
        return replies

    # -- the interface --------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> StepOutput:
        self._usable()
        b = self.spec.num_envs
        seeds: list[int | None] = [None] * b if seed is None else list(copy_seeds(seed, b))
        self._send_all([("reset", s) for s in seeds])
        replies = self._gather("reset", RESET_TIMEOUT_S)
        for i, (_, procs) in enumerate(replies):
            self._game_procs[i] = procs
        obs, state, avail = self._stack([observation for observation, _ in replies])
        self._avail = avail
        return StepOutput.first(obs.to(self.device), state.to(self.device), avail.to(self.device))

    def step(self, actions: torch.Tensor) -> StepOutput:
        self._usable()
        if self._avail is None:
            raise EnvError("call reset() before step()")
        actions = self._check_actions(actions).cpu()
        self._check_available(actions)
        numpy_actions = actions.numpy()
        self._send_all([("step", numpy_actions[i]) for i in range(self.spec.num_envs)])
        replies = self._gather("step", STEP_TIMEOUT_S)

        rewards, terminated, truncated, won, observations, finals = zip(*(r[:6] for r in replies))
        for i, reply in enumerate(replies):
            if reply[6] is not None:
                self._game_procs[i] = reply[6]
        obs, state, avail = self._stack(observations)
        final_obs, final_state, final_avail = self._stack(
            [final if final is not None else current for final, current in zip(finals, observations)]
        )
        self._avail = avail
        reward = torch.tensor(rewards, dtype=torch.float32).unsqueeze(1).expand(-1, self.spec.n_agents)
        to = self.device
        return StepOutput(
            obs=obs.to(to),
            state=state.to(to),
            avail_actions=avail.to(to),
            reward=reward.contiguous().to(to),
            terminated=torch.tensor(terminated, dtype=torch.bool, device=to),
            truncated=torch.tensor(truncated, dtype=torch.bool, device=to),
            won=torch.tensor(won, dtype=torch.bool, device=to),
            final_obs=final_obs.to(to),
            final_state=final_state.to(to),
            final_avail_actions=final_avail.to(to),
        )

    def _check_available(self, actions: torch.Tensor) -> None:
        """smacv2 asserts inside the game process; refuse unavailable actions here, with details."""
        n_actions = self.spec.n_actions
        if bool(((actions < 0) | (actions >= n_actions)).any()):
            values = sorted(set(actions.flatten().tolist()))
            raise EnvError(f"actions must be in [0, {n_actions}), got values {values}")
        assert self._avail is not None
        ok = self._avail.gather(2, actions.unsqueeze(-1)).squeeze(-1)
        if not bool(ok.all()):
            bad = [(int(b), int(a), int(actions[b, a])) for b, a in (~ok).nonzero().tolist()]
            raise EnvError(f"unavailable actions chosen, as (copy, agent, action): {bad[:10]}")

    @staticmethod
    def _stack(observations: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, ...]:
        obs, state, avail = zip(*observations)
        return (
            torch.from_numpy(np.stack(obs)),
            torch.from_numpy(np.stack(state)),
            torch.from_numpy(np.stack(avail)),
        )

    def game_pids(self) -> list[list[int]]:
        """Per copy, the pids of the processes its worker started (the game), as last reported."""
        return [[pid for pid, _ in procs] for procs in self._game_procs]

    def worker_pids(self) -> list[int]:
        return [worker.pid for worker in self._workers]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _LIVE_ENVS.discard(self)
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except OSError:
                pass
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        for worker in self._workers:
            if worker.is_alive():
                worker.terminate()
                worker.join(_STOP_GRACE_S)
            if worker.is_alive():
                worker.kill()
                worker.join(_STOP_GRACE_S)
        for conn in self._conns:
            conn.close()
        # A worker that died (or was killed above) could not stop its game: stop the recorded ones.
        leftovers = []
        for procs in self._game_procs:
            for pid, created in procs:
                try:
                    proc = psutil.Process(pid)
                    if proc.create_time() == created:
                        leftovers.append(proc)
                except psutil.NoSuchProcess:
                    pass
        _stop_processes(leftovers)

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "family": FAMILY,
            "scenario": self.scenario,
            "backend": "smacv2" if self._uses_smacv2 else "test double",
            "map_name": self._kwargs["map_name"],
            "options": dataclasses.asdict(self.options),
        }
        if self._uses_smacv2:
            out.update(backend_versions())
            path = sc2_path() / "Maps" / map_file(self.scenario)
            out["map_file"] = str(path)
            out["map_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        return out


def make(
    scenario: str, num_envs: int = 1, seed: int = 0, device: str | torch.device = "cpu", **options: Any
) -> SmacEnv:
    """Validate the options, check the backend, and start the workers (always on smacv2)."""
    parsed = scenario_options(scenario, options)
    reason = unavailable_reason(scenario)
    if reason is not None:
        raise BackendUnavailableError(reason)
    return SmacEnv(scenario, num_envs=num_envs, seed=seed, device=device, options=parsed)
