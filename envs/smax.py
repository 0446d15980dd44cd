"""SMAC maps on SMAX, JaxMARL's JAX re-implementation of the SMAC unit micro-management tasks.

SMAX is an embedded stand-in for SMAC, not StarCraft II: an open 32x32 arena with six unit types,
no terrain, shields or medivacs. It is played as in SMAC: our agents control the allies against
SMAX's scripted enemy (``HeuristicEnemySMAX``).

Everything that touches JAX lives in this module. All B copies advance in one jitted, vmapped call
that also stacks the per-agent dicts into ``[B, N, ...]`` arrays. The results reach torch without
copies (on a CPU device): the returned tensors are read-only views of JAX's output buffers, so
clone one before modifying it in place. ``torch.from_numpy(np.asarray(x))`` is used rather than
``torch.from_dlpack(x)``: both share the buffer, but the former costs about 3.5 us per array against
12 us (measured on this project's CPU machine), which adds up over the ten arrays of each step.

Auto-reset follows ``envs/base.py``: JaxMARL's own ``step`` resets a finished episode and drops its
last observation, so the jitted step calls ``step_env`` and does the reset selection itself, keeping
the last observation of the finished episode in ``final_*``. The random keys are split exactly as
``MultiAgentEnv.step`` splits them, so a copy follows the same trajectory as JaxMARL's own ``step``.

JAX runs on the CPU only (``jax_platforms="cpu"``: it never probes for or claims accelerators, which
torch may be using). XLA's CPU backend would also run multi-threaded Eigen kernels on a pool with one
thread per core, competing with the torch learner and other runs for no gain on these small
computations, so ``--xla_cpu_multi_thread_eigen=false`` is added to ``XLA_FLAGS`` (only here, before
JAX starts its backend, and only when the user's ``XLA_FLAGS`` does not set it). XLA has no flag for
the size of its CPU thread pool; it sizes it by the CPUs the process may run on (``taskset``).

Compiling one (map, batch size) takes 5-15 s on a 2-core CPU. Within a process the compiled functions
are cached per (scenario, options, num_envs); across processes (every run of a suite, every test
session) JAX's persistent compilation cache keeps them on disk, in ``$SMAX_JAX_CACHE_DIR`` (default
``~/.cache/marl-repro-suite/jax``; ``off`` disables it; JAX's own ``JAX_COMPILATION_CACHE_DIR``
takes precedence), which brings a make() down to about 2 s of tracing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

# Must be set before JAX initialises its CPU backend (at the first computation).
_XLA_CPU_FLAG = "--xla_cpu_multi_thread_eigen"
if _XLA_CPU_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_XLA_CPU_FLAG}=false".strip()

import dataclasses  # noqa: E402
import typing  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib.metadata import version  # noqa: E402
from typing import Any, Callable, Iterator, Literal, NamedTuple  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

jax.config.update("jax_platforms", "cpu")  # never probe for (or grab) accelerators
if not jax.config.jax_compilation_cache_dir:
    _cache_dir = os.environ.get("SMAX_JAX_CACHE_DIR", os.path.expanduser("~/.cache/marl-repro-suite/jax"))
    if _cache_dir != "off":
        jax.config.update("jax_compilation_cache_dir", _cache_dir)

from envs.quiet import quiet_import  # noqa: E402


@contextlib.contextmanager
def _without_package_inits(*packages: str) -> Iterator[None]:
    """Import submodules of ``packages`` without running the packages' ``__init__``: each one not
    yet imported stands in as an empty package (its real search path) during the block, then is
    dropped, so a later ``import`` of the package runs its ``__init__`` and finds the submodules
    already loaded (the same module objects)."""
    stand_ins = []
    for name in packages:
        if name not in sys.modules:
            spec = importlib.util.find_spec(name)
            if spec is None or spec.submodule_search_locations is None:
                raise ModuleNotFoundError(f"no package named {name!r}", name=name)
            sys.modules[name] = importlib.util.module_from_spec(spec)  # not executed
            stand_ins.append(name)
    try:
        yield
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)


# jaxmarl/__init__.py and jaxmarl/environments/__init__.py import every environment JaxMARL ships
# (Hanabi, Overcooked, MPE, STORM, JaxNav, its Brax wrapper, matplotlib): 0.13 GiB of resident
# memory in every SMAX run and in reproduce.py, for modules SMAX never uses. Only the SMAX package
# is loaded (it imports nothing else of jaxmarl's but multi_agent_env and spaces). quiet_import
# stays for the case where jaxmarl was imported in full before (its __init__ prints "Importing
# submoduled environments..." and its Brax wrapper resets stdout/stderr to the process's originals).
with quiet_import(), _without_package_inits("jaxmarl", "jaxmarl.environments"):
    from jaxmarl.environments.smax import HeuristicEnemySMAX  # noqa: E402
    from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO  # noqa: E402

from envs.base import (  # noqa: E402
    BatchedEnv,
    EnvError,
    EnvSpec,
    StepOutput,
    UnknownChoiceError,
    parse_options,
)

FAMILY = "smax"
BACKEND = "SMAX (jaxmarl) - an embedded stand-in for SMAC, not StarCraft II"
AttackMode = Literal["closest", "random"]
ObservationType = Literal["unit_list", "conic"]
ATTACK_MODES = typing.get_args(AttackMode)
OBSERVATION_TYPES = typing.get_args(ObservationType)


@dataclass(frozen=True)
class SMAXOptions:
    """Scenario options; the defaults are SMAX's and HeuristicEnemySMAX's own."""

    attack_mode: AttackMode = "closest"  # heuristic enemy's choice of target: "closest" or "random"
    enemy_shoots: bool = True  # False: the enemy only moves (an easy sanity-check task)
    max_steps: int = 100  # SMAX's time limit: episodes are truncated after max_steps + 1 steps
    won_battle_bonus: float = 1.0  # reward added on the step that wins the battle
    walls_cause_death: bool = True  # units touching the map edge die
    see_enemy_actions: bool = True  # enemies' last actions are part of the observations
    observation_type: ObservationType = "unit_list"  # "unit_list" (SMAC-like) or "conic" (sectors around the unit)
    world_steps_per_env_step: int = 8  # physics sub-steps per agent decision
    # SMAX's world_state carries raw positions (0..32), cooldowns in seconds and unit-type indices;
    # SMAC's state is normalised, and QMIX-style hypernetwork mixers blow up on the raw scale
    # (Q_tot ~ 25 at initialisation on 3m). True rescales it inside the jitted step: positions by
    # the map size, cooldowns by the longest weapon cooldown (clipped to [-1, 1]: SMAX lets them run
    # negative), type indices by the number of types.
    normalize_state: bool = True

    def __post_init__(self) -> None:
        if self.attack_mode not in ATTACK_MODES:
            raise UnknownChoiceError("SMAX attack_mode", self.attack_mode, ATTACK_MODES)
        if self.observation_type not in OBSERVATION_TYPES:
            raise UnknownChoiceError("SMAX observation_type", self.observation_type, OBSERVATION_TYPES)
        for name in ("max_steps", "world_steps_per_env_step"):
            if getattr(self, name) < 1:
                raise EnvError(f"SMAX option {name!r} must be >= 1, got {getattr(self, name)!r}")


def list_scenarios() -> list[str]:
    return list(MAP_NAME_TO_SCENARIO)


def unavailable_reason(scenario: str) -> str | None:
    return None  # SMAX is pure JAX: every registered map runs wherever jaxmarl is installed


def scenario_options(scenario: str, options: dict[str, Any]) -> SMAXOptions:
    """The user's options, checked (no environment is built, nothing is compiled)."""
    if scenario not in MAP_NAME_TO_SCENARIO:
        raise UnknownChoiceError("smax scenario", scenario, list_scenarios())
    return parse_options(SMAXOptions, options, f"smax scenario {scenario!r}")


def make(scenario: str, num_envs: int, seed: int, device: torch.device, **options: Any) -> "SMAXEnv":
    opts = scenario_options(scenario, options)
    return SMAXEnv(scenario, num_envs, seed, torch.device(device), opts)


class _Out(NamedTuple):
    """Per-step arrays, batched [B, ...]; the JAX-side mirror of StepOutput."""

    obs: jax.Array
    state: jax.Array
    avail_actions: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    won: jax.Array
    final_obs: jax.Array
    final_state: jax.Array
    final_avail_actions: jax.Array


# A policy that runs inside JAX, for ``SMAXEnv.rollout``. Called per copy (it is vmapped over B):
# (key, obs [N, obs_dim], avail_actions [N, A] bool) -> actions [N] int.
JaxPolicy = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def uniform_available_policy(key: jax.Array, obs: jax.Array, avail_actions: jax.Array) -> jax.Array:
    """Each agent picks uniformly among its available actions."""
    keys = jax.random.split(key, avail_actions.shape[0])
    logits = jnp.where(avail_actions, 0.0, -jnp.inf)
    return jax.vmap(jax.random.categorical)(keys, logits)


@dataclass
class RolloutResult:
    """What ``SMAXEnv.rollout`` returns: per-step tensors [T, B, ...] and the last StepOutput."""

    actions: torch.Tensor  # [T, B, N] int32
    reward: torch.Tensor  # [T, B, N] float32
    terminated: torch.Tensor  # [T, B] bool
    truncated: torch.Tensor  # [T, B] bool
    won: torch.Tensor  # [T, B] bool
    last: StepOutput  # the output of the final step (what step() would have returned)


_POLICY_STREAM = 1  # fold_in data that derives rollout policy keys from the env keys


def _state_scale(smax: Any) -> jax.Array:
    """Per-entry factors that bring SMAX's world_state to SMAC-like ranges. Layout (jaxmarl
    ``get_world_state``): per unit [health fraction, x, y, weapon cooldown, unit-type one-hot],
    then every unit's team (0/1), then every unit's type index."""
    n_units, n_types = smax.num_agents, smax.unit_type_bits
    per_unit = [
        1.0,
        1.0 / smax.map_width,
        1.0 / smax.map_height,
        1.0 / float(jnp.max(smax.unit_type_weapon_cooldowns)),
    ] + [1.0] * n_types
    assert len(per_unit) == len(smax.own_features), "unexpected SMAX world_state layout"
    return jnp.concatenate(
        [
            jnp.tile(jnp.asarray(per_unit, jnp.float32), n_units),
            jnp.ones(n_units, jnp.float32),
            jnp.full(n_units, 1.0 / max(n_types - 1, 1), jnp.float32),
        ]
    )


class _Compiled:
    """The jitted functions of one (scenario, options, B); built once per process."""

    def __init__(self, scenario: str, opts: SMAXOptions, num_envs: int):
        kwargs = dataclasses.asdict(opts)
        normalize_state = kwargs.pop("normalize_state")
        self.env = HeuristicEnemySMAX(
            enemy_shoots=kwargs.pop("enemy_shoots"),
            attack_mode=kwargs.pop("attack_mode"),
            scenario=MAP_NAME_TO_SCENARIO[scenario],
            **kwargs,
        )
        self.num_envs = num_envs
        self.state_scale = _state_scale(self.env._env) if normalize_state else None
        self.reset = jax.jit(jax.vmap(self._reset_one))
        self.step = jax.jit(jax.vmap(self._step_one), donate_argnums=(0, 1))
        self._rollouts: dict[tuple[int, JaxPolicy], Any] = {}

    # Per-copy functions (vmapped above) -------------------------------------------------------

    def _stack(self, per_agent: dict[str, jax.Array]) -> jax.Array:
        return jnp.stack([per_agent[a] for a in self.env.agents])

    def _observe(self, obs: dict[str, jax.Array], state: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        avail = self._stack(self.env.get_avail_actions(state)).astype(bool)
        world_state = obs["world_state"]
        if self.state_scale is not None:
            # SMAX's cooldowns keep counting below zero while a unit is ready to fire: clip.
            world_state = jnp.clip(world_state * self.state_scale, -1.0, 1.0)
        return self._stack(obs), world_state, avail

    def _reset_one(self, key: jax.Array) -> tuple[jax.Array, Any, _Out]:
        key, reset_key = jax.random.split(key)
        obs, state = self.env.reset(reset_key)
        # The heuristic enemy's initial state holds a weakly typed int; make it strong so the
        # state that reset returns has the same types as the one step returns (else step retraces).
        state = jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), state)
        o, s, av = self._observe(obs, state)
        no = jnp.zeros((), bool)
        reward = jnp.zeros((self.env.num_agents,), jnp.float32)
        return key, state, _Out(o, s, av, reward, no, no, no, o, s, av)

    def _step_one(self, key: jax.Array, state: Any, actions: jax.Array) -> tuple[jax.Array, Any, _Out]:
        key, step_key = jax.random.split(key)
        # From here on the same key use as MultiAgentEnv.step(step_key, ...), minus its reset.
        step_key, reset_key = jax.random.split(step_key)
        act = {a: actions[i] for i, a in enumerate(self.env.agents)}
        obs, next_state, rewards, dones, _ = self.env.step_env(step_key, state, act)
        final_obs, final_state, final_avail = self._observe(obs, next_state)

        alive = next_state.state.unit_alive
        allies_alive = jnp.any(alive[: self.env.num_allies])
        enemies_alive = jnp.any(alive[self.env.num_allies :])
        terminated = ~(allies_alive & enemies_alive)
        truncated = dones["__all__"] & ~terminated  # SMAX's done = eliminated | step >= max_steps
        won = allies_alive & ~enemies_alive

        reset_obs, reset_state = self.env.reset(reset_key)
        done = dones["__all__"]
        new_state = jax.tree.map(lambda r, s: jnp.where(done, r, s), reset_state, next_state)
        o, s, av = self._observe(reset_obs, new_state)  # the mask from new_state, obs selected below
        o = jnp.where(done, o, final_obs)
        s = jnp.where(done, s, final_state)
        reward = self._stack(rewards).astype(jnp.float32)
        out = _Out(o, s, av, reward, terminated, truncated, won, final_obs, final_state, final_avail)
        return key, new_state, out

    # Scan-based rollout -------------------------------------------------------------------------

    def rollout_fn(self, num_steps: int, policy: JaxPolicy) -> Any:
        """jit(keys, state, out) -> (keys, state, out, trajectory) running num_steps in one scan."""
        cache_key = (num_steps, policy)
        if cache_key not in self._rollouts:

            def body(carry, _):
                keys, state, out = carry
                # fold_in leaves the env's key chain as step() would advance it, so replaying the
                # returned actions through step() reproduces the rollout exactly.
                policy_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, _POLICY_STREAM)
                actions = jax.vmap(policy)(policy_keys, out.obs, out.avail_actions).astype(jnp.int32)
                keys, state, out = jax.vmap(self._step_one)(keys, state, actions)
                traj = {
                    "actions": actions,
                    "reward": out.reward,
                    "terminated": out.terminated,
                    "truncated": out.truncated,
                    "won": out.won,
                }
                return (keys, state, out), traj

            def run(keys, state, out):
                (keys, state, out), traj = jax.lax.scan(body, (keys, state, out), None, length=num_steps)
                return keys, state, out, traj

            self._rollouts[cache_key] = jax.jit(run, donate_argnums=(0, 1))
        return self._rollouts[cache_key]


_COMPILED: dict[tuple[str, SMAXOptions, int], _Compiled] = {}


def _compiled(scenario: str, opts: SMAXOptions, num_envs: int) -> _Compiled:
    """Module-level cache: a second env with the same key reuses the compiled functions."""
    key = (scenario, opts, num_envs)
    if key not in _COMPILED:
        c = _Compiled(scenario, opts, num_envs)
        # Compile both functions now (once per process), not on the first training step.
        keys, state, out = c.reset(jax.random.split(jax.random.key(0), num_envs))
        c.step(keys, state, np.zeros(out.avail_actions.shape[:2], np.int32))  # as step() passes them
        _COMPILED[key] = c
    return _COMPILED[key]


def _to_torch(arrays: dict[str, jax.Array], device: torch.device) -> dict[str, torch.Tensor]:
    """Zero-copy views of JAX's CPU buffers (copied once more only for a non-CPU device)."""
    with warnings.catch_warnings():
        # torch warns that the NumPy view is not writable: true, and documented above.
        warnings.simplefilter("ignore", UserWarning)
        out = {name: torch.from_numpy(np.asarray(x)) for name, x in arrays.items()}
    if device.type != "cpu":
        out = {name: t.to(device, non_blocking=True) for name, t in out.items()}
    return out


class SMAXEnv(BatchedEnv):
    """B copies of one SMAX map against the heuristic enemy; see the module docstring."""

    def __init__(self, scenario: str, num_envs: int, seed: int, device: torch.device, opts: SMAXOptions):
        self.device = device
        self.options = opts
        self._c = _compiled(scenario, opts, num_envs)
        env = self._c.env
        self.spec = EnvSpec(
            family=FAMILY,
            scenario=scenario,
            num_envs=num_envs,
            n_agents=env.num_agents,
            n_actions=env.num_ally_actions,
            obs_shape=(env.obs_size,),
            state_shape=(env.state_size,),
            # SMAX tests step >= max_steps *before* counting the current step, so the longest
            # episode has max_steps + 1 steps.
            episode_limit=opts.max_steps + 1,
            shared_reward=True,
            has_won=True,
            options=dataclasses.asdict(opts),
        )
        self._seed(seed)
        self._state: Any = None
        self._out: _Out | None = None
        self._avail: torch.Tensor | None = None

    def _seed(self, seed: int) -> None:
        self._keys = jax.random.split(jax.random.key(seed), self.spec.num_envs)

    def _publish(self, keys: jax.Array, state: Any, out: _Out) -> StepOutput:
        self._keys, self._state, self._out = keys, state, out
        t = StepOutput(**_to_torch(out._asdict(), self.device))
        self._avail = t.avail_actions
        return t

    def reset(self, seed: int | None = None) -> StepOutput:
        if seed is not None:
            self._seed(seed)
        return self._publish(*self._c.reset(self._keys))

    def step(self, actions: torch.Tensor) -> StepOutput:
        actions = self._checked(actions)
        return self._publish(*self._c.step(self._keys, self._state, actions))

    def rollout(self, num_steps: int, policy: JaxPolicy = uniform_available_policy) -> RolloutResult:
        """Advance every copy num_steps steps with a policy that runs inside JAX: one lax.scan, one
        call, no per-step Python. Auto-resets as in step(); the env continues from where it ends.
        The first call per (num_steps, policy) compiles (seconds); pass the same function object
        (not a fresh lambda) to reuse the compiled scan."""
        if self._out is None:
            raise EnvError("call reset() before rollout()")
        if not isinstance(num_steps, int) or num_steps < 1:
            raise EnvError(f"num_steps must be a positive integer, got {num_steps!r}")
        fn = self._c.rollout_fn(num_steps, policy)
        keys, state, out, traj = fn(self._keys, self._state, self._out)
        last = self._publish(keys, state, out)
        return RolloutResult(**_to_torch(traj, self.device), last=last)

    def _checked(self, actions: torch.Tensor) -> np.ndarray:
        """Shape, range and availability checks (SMAC rejects unavailable actions too, and JAX would
        silently clamp an out-of-range index); returns the actions as an int32 NumPy array."""
        if self._avail is None:
            raise EnvError("call reset() before step()")
        actions = self._check_actions(actions)
        try:
            ok = self._avail.gather(2, actions.unsqueeze(-1)).squeeze(-1)
        except RuntimeError:  # an index outside [0, n_actions)
            raise EnvError(
                f"actions must lie in [0, {self.spec.n_actions}), "
                f"got values {actions.min().item()}..{actions.max().item()}"
            ) from None
        if not ok.all():
            env_i, agent_i = (~ok).nonzero()[0].tolist()
            raise EnvError(
                f"action {actions[env_i, agent_i].item()} is not available to agent {agent_i} of env {env_i} "
                f"(available: {self._avail[env_i, agent_i].nonzero().flatten().tolist()})"
            )
        return actions.to("cpu", torch.int32).numpy()

    def provenance(self) -> dict[str, Any]:
        return {
            "family": FAMILY,
            "scenario": self.spec.scenario,
            "backend": BACKEND,
            "jaxmarl": version("jaxmarl"),
            "jax": jax.__version__,
            "jaxlib": version("jaxlib"),
            "options": dataclasses.asdict(self.options),
        }
