"""Predator-Prey: the stag-hunt "punishment" task of the WQMIX/DDN line, as native batched torch.

The rules, observation and state layout follow PyMARL2's ``src/envs/stag_hunt/stag_hunt.py`` run
with its ``config/envs/stag_hunt.yaml`` (capture_action=True, capture_freezes=True,
remove_frozen=True, bounded world, no wall/ID features, reward_time=0, reward_collision=0,
p_stags_rest=0). All B copies are stepped together with tensor ops; nothing loops over copies,
agents or prey.

Grid and entities
-----------------
Positions are ``(row, col)``, row 0 at the top, on a bounded ``grid_height x grid_width`` grid.
No two present entities share a cell. Agents that capture a prey are *frozen*: they are removed
from the grid (they block nothing, are seen by nobody, observe zeros and can only "stay").

Actions (index: effect): 0 right (col+1), 1 down (row+1), 2 left (col-1), 3 up (row-1), 4 stay,
5 catch. Available-action masks: moves that would leave the grid are unavailable (moves into cells
held by other entities stay available and are blocked when executed, as in the reference); stay is
always available; catch only when a live prey is 4-adjacent; a frozen agent has only stay.
Unavailable actions are not rejected: a move into a wall keeps the agent in place and a frozen
agent ignores its action.

One step, in this order
-----------------------
1. **Agents move, simultaneously.** An active agent with a move action goes to its target cell when
   that cell is inside the grid, was empty at the start of the step (no active agent, no live prey)
   and no agent of higher priority targets it; otherwise it stays. Priorities are a fresh random
   order every step, drawn from the environment's generator (the reference moves agents one by one
   in a random order). Hence an agent never enters a cell that another agent leaves in the same
   step; with a seed the resolution is fully deterministic.
2. **Captures.** For every live prey, count the active agents that chose catch and are 4-adjacent
   to it. With at least ``capture_agents_needed`` (stags; ``hare_capture_agents_needed`` for hares)
   the prey is captured: its reward is paid, it disappears, and the catching agents adjacent to it
   are frozen. With at least one but too few catchers, ``miscapture_punishment`` is added once for
   that prey. A catching agent counts for every prey it is adjacent to (the reference processes prey
   one by one, so there an agent frozen by an earlier prey of the same step no longer counts).
3. **Prey move.** Every remaining live prey picks uniformly one of its 4-neighbour cells that is
   inside the grid and empty after steps 1-2, and moves there: prey never rest while such a cell
   exists. When several prey pick the same cell, the one of highest (fresh random) priority moves
   and the others stay this step; a prey never enters a cell another prey leaves in the same step.
4. **End.** The team reward of the step is the sum of capture rewards, punishments and
   ``time_reward``, given to every agent. The episode *terminates* when all prey are captured or
   all agents are frozen, and is *truncated* when it reaches ``episode_limit`` steps otherwise.

Observations and state
----------------------
Channels are (agent, stag, hare), as the reference's grid. An agent observes the
``(2r+1) x (2r+1)`` square centred on itself (``r = agent_view_radius``) as a ``[2r+1, 2r+1, 3]``
block flattened row-major (channel last); cells outside the grid are zero, the centre shows the agent
itself. The global state is the whole ``[grid_height, grid_width, 3]`` grid flattened the same way.
Only active agents and live prey appear.

Auto-reset follows ``envs/base.py``. ``set_positions`` places entities by hand (for tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from envs.base import BatchedEnv, EnvError, EnvSpec, StepOutput, UnknownChoiceError, parse_options

FAMILY = "predator_prey"

RIGHT, DOWN, LEFT, UP, STAY, CATCH = range(6)
N_ACTIONS = 6
ACTION_NAMES = ("right", "down", "left", "up", "stay", "catch")
N_CHANNELS = 3  # agent, stag, hare
_PRIORITY_LEVELS = 1 << 20  # random priorities are drawn from this many levels, then made unique


@dataclass(frozen=True)
class PredatorPreyOptions:
    """Scenario options; defaults are PyMARL2's stag_hunt.yaml (the standard 10x10 task)."""

    grid_height: int = 10
    grid_width: int = 10
    n_agents: int = 8
    n_stags: int = 8
    n_hares: int = 0
    agent_view_radius: int = 2  # reference agent_obs [2, 2]: a 5x5 view
    capture_agents_needed: int = 2  # catching agents a stag needs (capture_action_conditions[0])
    hare_capture_agents_needed: int = 1  # capture_action_conditions[1]
    capture_reward: float = 10.0  # per stag (reward_stag)
    hare_reward: float = 1.0  # reward_hare
    miscapture_punishment: float = 0.0  # papers use 0, -0.5, -1, -1.5, -2
    time_reward: float = 0.0  # reward_time, added every step
    episode_limit: int = 200

    def __post_init__(self) -> None:
        _validate(self)  # options that cannot work are refused where they are made (manifest validation too)


SCENARIOS: dict[str, dict[str, Any]] = {
    # The standard "difficulty-enhanced" predator-prey of WQMIX/DDN.
    "stag_hunt": {},
    # Small and quick to learn, for learning tests.
    "stag_hunt_small": {"grid_height": 5, "grid_width": 5, "n_agents": 2, "n_stags": 1, "episode_limit": 50},
}


def list_scenarios() -> list[str]:
    return list(SCENARIOS)


def unavailable_reason(scenario: str) -> str | None:
    return None  # pure torch: runs anywhere


def scenario_options(scenario: str, options: dict[str, Any]) -> PredatorPreyOptions:
    """The scenario's options with the user's on top, checked by the task's own rules (cheap: no
    environment is built). Raises EnvError saying what is wrong."""
    if scenario not in SCENARIOS:
        raise UnknownChoiceError(f"{FAMILY} scenario", scenario, list(SCENARIOS))
    return parse_options(PredatorPreyOptions, {**SCENARIOS[scenario], **options}, f"{FAMILY} scenario {scenario!r}")


def make(
    scenario: str, num_envs: int = 1, seed: int = 0, device: str | torch.device = "cpu", **options: Any
) -> "PredatorPreyEnv":
    opts = scenario_options(scenario, options)
    return PredatorPreyEnv(scenario, opts, num_envs=num_envs, seed=seed, device=torch.device(device))


def _validate(o: PredatorPreyOptions) -> None:
    problems = []
    if o.grid_height < 1 or o.grid_width < 1:
        problems.append("grid_height and grid_width must be >= 1")
    if o.n_agents < 1:
        problems.append("n_agents must be >= 1")
    if o.n_stags < 0 or o.n_hares < 0 or o.n_stags + o.n_hares < 1:
        problems.append("n_stags and n_hares must be >= 0 with at least one prey")
    if o.n_agents + o.n_stags + o.n_hares > o.grid_height * o.grid_width:
        problems.append(
            f"agents and prey do not fit on the grid: {o.n_agents} agents + {o.n_stags + o.n_hares} prey "
            f"need {o.n_agents + o.n_stags + o.n_hares} cells, a {o.grid_height}x{o.grid_width} grid has "
            f"{o.grid_height * o.grid_width} (enlarge grid_height/grid_width or use fewer agents/prey)"
        )
    if o.agent_view_radius < 0:
        problems.append("agent_view_radius must be >= 0")
    for name in ("capture_agents_needed", "hare_capture_agents_needed"):
        if not 1 <= getattr(o, name) <= 4:
            problems.append(f"{name} must be between 1 and 4 (a prey has 4 neighbours)")
    if o.episode_limit < 1:
        problems.append("episode_limit must be >= 1")
    if problems:
        raise EnvError(f"bad {FAMILY} options: " + "; ".join(problems) + f" (all options: {dataclasses.asdict(o)})")


class PredatorPreyEnv(BatchedEnv):
    """B copies of the stag-hunt task; see the module docstring for the rules.

    Internally an entity's position is its cell index ``row * W + col``; precomputed per-cell
    tables (where each action leads, which cells a view window covers) replace coordinate
    arithmetic, so a step costs O(B * (N + M)) small tensor ops plus the observation copy.
    """

    def __init__(self, scenario: str, options: PredatorPreyOptions, num_envs: int, seed: int, device: torch.device):
        o = self.options = options  # valid: PredatorPreyOptions checks itself
        self.device = dev = torch.device(device)
        self.B, self.N, self.M = num_envs, o.n_agents, o.n_stags + o.n_hares
        self.H, self.W = o.grid_height, o.grid_width
        self.C = self.H * self.W  # number of cells; index C is an always-empty sink cell
        view = 2 * o.agent_view_radius + 1
        self.spec = EnvSpec(
            family=FAMILY,
            scenario=scenario,
            num_envs=num_envs,
            n_agents=self.N,
            n_actions=N_ACTIONS,
            obs_shape=(view * view * N_CHANNELS,),
            state_shape=(self.C * N_CHANNELS,),
            episode_limit=o.episode_limit,
            # Observations and state are 0/1 marks per cell and channel: exact in uint8 (the
            # 5000-episode replay of the 10x10 task is 0.97 GB instead of 3.74 GB).
            obs_storage_dtype=torch.uint8,
            state_storage_dtype=torch.uint8,
            shared_reward=True,
            has_won=False,
            options=dataclasses.asdict(o),
        )
        self._gen = torch.Generator(device=dev)
        self._gen.manual_seed(seed)

        long = dict(dtype=torch.long, device=dev)
        row, col = (
            torch.arange(self.C, **long).div(self.W, rounding_mode="floor"),
            torch.arange(self.C, **long) % self.W,
        )
        # _move[cell, action]: the cell an action leads to; the own cell for stay, catch and walls.
        d_row, d_col = torch.tensor([0, 1, 0, -1, 0, 0], **long), torch.tensor([1, 0, -1, 0, 0, 0], **long)
        to_row, to_col = row[:, None] + d_row, col[:, None] + d_col
        inside = (to_row >= 0) & (to_row < self.H) & (to_col >= 0) & (to_col < self.W)
        self._move = torch.where(inside, to_row * self.W + to_col, torch.arange(self.C, **long)[:, None])
        self._neighbours = self._move[:, :4].contiguous()
        self._can_move = inside[:, :4].contiguous()
        # _window[cell]: the cells of the view square centred there, row-major; the sink outside the
        # grid. An extra last row (all sink) is the blank view of frozen agents.
        offsets = torch.arange(-o.agent_view_radius, o.agent_view_radius + 1, **long)
        w_row = row[:, None, None] + offsets[None, :, None]
        w_col = col[:, None, None] + offsets[None, None, :]
        seen = (w_row >= 0) & (w_row < self.H) & (w_col >= 0) & (w_col < self.W)
        window = torch.where(seen, w_row * self.W + w_col, self.C).view(self.C, view * view)
        self._window = torch.cat([window, torch.full((1, view * view), self.C, **long)])
        self._cell_base = torch.arange(self.B, **long)[:, None, None] * (self.C + 1)

        is_stag = torch.arange(self.M, device=dev) < o.n_stags
        self._prey_needed = torch.where(is_stag, o.capture_agents_needed, o.hare_capture_agents_needed)
        self._prey_reward = torch.where(is_stag, o.capture_reward, o.hare_reward).to(torch.float32)
        self._prey_channel = torch.where(is_stag, 1, 2)
        self._agent_ids = torch.arange(self.N, **long)
        self._prey_ids = torch.arange(self.M, **long)

        # Episode state, set by reset() / set_positions().
        self._agent_cell = torch.zeros(self.B, self.N, **long)
        self._prey_cell = torch.zeros(self.B, self.M, **long)
        self._active = torch.zeros(self.B, self.N, dtype=torch.bool, device=dev)
        self._alive = torch.zeros(self.B, self.M, dtype=torch.bool, device=dev)
        self._t = torch.zeros(self.B, **long)
        self._started = False

    # Public interface ---------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> StepOutput:
        if seed is not None:
            self._gen.manual_seed(seed)
        self._agent_cell, self._prey_cell = self._random_cells()
        self._active.fill_(True)
        self._alive.fill_(True)
        self._t.zero_()
        self._started = True
        return self._first_output()

    def step(self, actions: torch.Tensor) -> StepOutput:
        if not self._started:
            raise EnvError("call reset() before step()")
        a = self._check_actions(actions)
        if ((a < 0) | (a >= N_ACTIONS)).any():
            raise EnvError(
                f"actions must be in [0, {N_ACTIONS}) ({', '.join(ACTION_NAMES)}), got {a.unique().tolist()}"
            )
        B, N, M = self.B, self.N, self.M
        # One draw for every random choice of the step: agent priorities, prey priorities, prey moves.
        noise = torch.rand(B, N + M + 4 * M, generator=self._gen, device=self.device)

        agent_cell = self._move_agents(a, noise[:, :N])
        active, alive, reward = self._captures(a, agent_cell)
        prey_cell = self._move_prey(agent_cell, active, alive, noise[:, N : N + M], noise[:, N + M :].view(B, M, 4))

        self._agent_cell, self._prey_cell, self._active, self._alive = agent_cell, prey_cell, active, alive
        self._t += 1
        terminated = ~alive.any(1) | ~active.any(1)
        truncated = (self._t >= self.options.episode_limit) & ~terminated
        done = terminated | truncated

        obs, state, avail = self._observe()
        final_obs, final_state, final_avail = obs, state, avail
        if done.any():
            self._reset_where(done)
            obs, state, avail = self._observe()
        return StepOutput(
            obs=obs,
            state=state,
            avail_actions=avail,
            reward=reward[:, None].repeat(1, N),
            terminated=terminated,
            truncated=truncated,
            won=torch.zeros(B, dtype=torch.bool, device=self.device),
            final_obs=final_obs,
            final_state=final_state,
            final_avail_actions=final_avail,
        )

    def set_positions(
        self,
        agents: torch.Tensor,
        prey: torch.Tensor,
        agents_active: torch.Tensor | None = None,
        prey_alive: torch.Tensor | None = None,
        steps: torch.Tensor | int = 0,
    ) -> StepOutput:
        """Place entities by hand (used by tests to build known layouts).

        ``agents`` [B, N, 2] and ``prey`` [B, M, 2] are (row, col) positions (stags first, then
        hares); ``agents_active`` [B, N] / ``prey_alive`` [B, M] default to all true; ``steps`` is the
        number of steps already taken in the episode. Present entities must be inside the grid and
        on distinct cells. Returns the observation of the new situation, like ``reset``.
        """
        dev, B, N, M = self.device, self.B, self.N, self.M
        agents = torch.as_tensor(agents, dtype=torch.long, device=dev)
        prey = torch.as_tensor(prey, dtype=torch.long, device=dev)
        active = (
            torch.ones(B, N, dtype=torch.bool, device=dev)
            if agents_active is None
            else torch.as_tensor(agents_active, dtype=torch.bool, device=dev)
        )
        alive = (
            torch.ones(B, M, dtype=torch.bool, device=dev)
            if prey_alive is None
            else torch.as_tensor(prey_alive, dtype=torch.bool, device=dev)
        )
        for name, got, want in (
            ("agents", agents, (B, N, 2)),
            ("prey", prey, (B, M, 2)),
            ("agents_active", active, (B, N)),
            ("prey_alive", alive, (B, M)),
        ):
            if tuple(got.shape) != want:
                raise EnvError(f"{name} must have shape {want}, got {tuple(got.shape)}")
        pos = torch.cat([agents, prey], 1)
        if ((pos < 0) | (pos >= torch.tensor([self.H, self.W], device=dev))).any():
            raise EnvError(f"positions must lie inside the {self.H}x{self.W} grid")
        cell = pos[..., 0] * self.W + pos[..., 1]
        marked = torch.where(torch.cat([active, alive], 1), cell, -1 - torch.arange(N + M, device=dev))
        if (marked.sort(1).values.diff(dim=1) == 0).any():
            raise EnvError("two present entities share a cell")
        self._agent_cell, self._prey_cell = cell[:, :N].clone(), cell[:, N:].clone()
        self._active, self._alive = active.clone(), alive.clone()
        self._t = torch.as_tensor(steps, dtype=torch.long, device=dev).expand(B).clone()
        self._started = True
        return self._first_output()

    def get_positions(self) -> dict[str, torch.Tensor]:
        """Copies of the episode state (for tests and rendering): ``agents`` [B, N, 2] and ``prey``
        [B, M, 2] as (row, col), ``agents_active`` [B, N], ``prey_alive`` [B, M], ``steps`` [B]."""

        def to_pos(cell: torch.Tensor) -> torch.Tensor:
            return torch.stack([cell.div(self.W, rounding_mode="floor"), cell % self.W], -1)

        return {
            "agents": to_pos(self._agent_cell),
            "prey": to_pos(self._prey_cell),
            "agents_active": self._active.clone(),
            "prey_alive": self._alive.clone(),
            "steps": self._t.clone(),
        }

    def provenance(self) -> dict[str, Any]:
        return {
            "family": FAMILY,
            "scenario": self.spec.scenario,
            "backend": "native torch implementation",
            "reference": "PyMARL2 src/envs/stag_hunt/stag_hunt.py with config/envs/stag_hunt.yaml",
            "torch": torch.__version__,
            "options": dataclasses.asdict(self.options),
        }

    # Step phases (separate methods so benchmarks can time them) ---------------------------------

    def _move_agents(self, a: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        target = self._move[self._agent_cell, a]
        # Stay, catch and walls target the agent's own, occupied cell: only real moves into cells
        # empty at the start of the step remain.
        occupied = self._cells_marked(self._agent_cell, self._active) | self._cells_marked(self._prey_cell, self._alive)
        wants = self._active & ~occupied.gather(1, target)
        winner = self._resolve_conflicts(target, wants, noise, self._agent_ids)
        return torch.where(winner, target, self._agent_cell)

    def _captures(self, a: torch.Tensor, agent_cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, M = self.B, self.N, self.M
        catching = self._active & (a == CATCH)  # catching agents did not move
        catchers = self._cells_marked(agent_cell, catching)
        n_catching = catchers.gather(1, self._neighbours[self._prey_cell].view(B, 4 * M)).view(B, M, 4).sum(2)
        captured = self._alive & (n_catching >= self._prey_needed)
        missed = self._alive & (n_catching > 0) & ~captured
        reward = (
            captured.to(torch.float32) @ self._prey_reward
            + missed.sum(1).to(torch.float32) * self.options.miscapture_punishment
            + self.options.time_reward
        )
        captured_cells = self._cells_marked(self._prey_cell, captured)
        frozen = catching & captured_cells.gather(1, self._neighbours[agent_cell].view(B, 4 * N)).view(B, N, 4).any(2)
        return self._active & ~frozen, self._alive & ~captured, reward

    def _move_prey(self, agent_cell, active, alive, priority_noise, move_noise) -> torch.Tensor:
        B, M = self.B, self.M
        target = self._neighbours[self._prey_cell]  # [B, M, 4]; walls lead to the prey's own cell
        occupied = self._cells_marked(agent_cell, active) | self._cells_marked(self._prey_cell, alive)
        free = alive[..., None] & ~occupied.gather(1, target.view(B, 4 * M)).view(B, M, 4)
        # Uniform choice among free neighbours: the largest of iid scores, the blocked ones pushed below.
        choice = move_noise.masked_fill(~free, -1.0).argmax(2, keepdim=True)
        chosen = target.gather(2, choice).squeeze(2)
        winner = self._resolve_conflicts(chosen, free.any(2), priority_noise, self._prey_ids)
        return torch.where(winner, chosen, self._prey_cell)

    def _observe(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = self.B, self.N, self.C
        agent_cell, active = self._agent_cell, self._active
        # Picture of the grid: entities are on distinct cells, so adding marks gives 0/1 per channel.
        index = torch.cat([agent_cell * N_CHANNELS, self._prey_cell * N_CHANNELS + self._prey_channel], 1)
        marks = torch.cat([active, self._alive], 1).to(torch.float32)
        grid = torch.zeros(B, (C + 1) * N_CHANNELS, device=self.device).scatter_add_(1, index, marks)
        grid = grid.view(B, C + 1, N_CHANNELS)
        state = grid[:, :C].reshape(B, -1)
        # Each agent's view: the rows of the grid its window covers (all sink for frozen agents).
        window = self._window[torch.where(active, agent_cell, C)] + self._cell_base
        obs = grid.view(-1, N_CHANNELS).index_select(0, window.view(-1)).view(B, N, -1)

        prey_here = self._cells_marked(self._prey_cell, self._alive)
        can_catch = active & prey_here.gather(1, self._neighbours[agent_cell].view(B, 4 * N)).view(B, N, 4).any(2)
        can_move = self._can_move[agent_cell] & active[..., None]
        stay = torch.ones(B, N, 1, dtype=torch.bool, device=self.device)
        avail = torch.cat([can_move, stay, can_catch[..., None]], 2)
        return obs, state, avail

    # Helpers ------------------------------------------------------------------------------------

    def _cells_marked(self, cell: torch.Tensor, mark: torch.Tensor) -> torch.Tensor:
        """[B, C + 1] bool: the cells of the entities whose mark is true."""
        where = torch.where(mark, cell, self.C)
        return torch.zeros(self.B, self.C + 1, dtype=torch.bool, device=self.device).scatter_(1, where, True)

    def _resolve_conflicts(
        self, cell: torch.Tensor, wants: torch.Tensor, noise: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """Among the entities that want to enter the same cell, the one of highest random priority
        wins. Priorities are made unique per copy by appending the entity index."""
        priority = (noise * _PRIORITY_LEVELS).long() * ids.numel() + ids
        priority = torch.where(wants, priority, -1)
        best = torch.full((self.B, self.C + 1), -1, dtype=torch.long, device=self.device)
        best.scatter_reduce_(1, cell, priority, reduce="amax")
        return wants & (best.gather(1, cell) == priority)

    def _random_cells(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct uniformly random cells for all agents and prey of every copy."""
        scores = torch.rand(self.B, self.C, generator=self._gen, device=self.device)
        cell = scores.argsort(1)[:, : self.N + self.M]
        return cell[:, : self.N], cell[:, self.N :]

    def _reset_where(self, done: torch.Tensor) -> None:
        agent_cell, prey_cell = self._random_cells()
        self._agent_cell = torch.where(done[:, None], agent_cell, self._agent_cell)
        self._prey_cell = torch.where(done[:, None], prey_cell, self._prey_cell)
        self._active = self._active | done[:, None]
        self._alive = self._alive | done[:, None]
        self._t = torch.where(done, 0, self._t)

    def _first_output(self) -> StepOutput:
        return StepOutput.first(*self._observe())
