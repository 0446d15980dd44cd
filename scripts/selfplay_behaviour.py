"""What a stag-hunt-in-the-matrix policy does in self-play: interactions, payoffs, inventories, actions.

Issue 16's budget pilot (records/tuning/selfplay_budget_pilot.md) finds self-play's test return
swinging around random play's. In ``stag_hunt_in_the_matrix__repeated`` a player earns only when
an interaction resolves (a zap between two players who both hold a resource): each gets v'Mw for
its normalised inventory v and the other's w, M = [[4, 0], [2, 2]] (stag row, hare row), then both
respawn. A return is therefore (interactions per episode) x (payoff per interaction); this script
measures both, with the stag share of the inventories at interaction time and the action mix, for
training checkpoints (both seats the checkpoint's actor, as the pilot's tests) and for two
uniform-random players. An interaction is a step at which either player's reward is non-zero (a
stag player meeting a hare player gets 0 while the hare player gets 2, so every interaction pays
someone).

    python scripts/selfplay_behaviour.py [--episodes 16] [--random] CHECKPOINT.pt ...

Prints one line per policy: env steps, per-capita return, interactions per episode, payoff per
interaction and player, stag share of inventories at interactions, and the action frequencies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from envs import make_env
from marl.policy.crossplay import UniformRandomActor
from marl.policy.population import config_as_built
from marl.policy.runner import SelfPlayPlayers, _Acting
from marl.registry import get_algorithm

SCENARIO = "stag_hunt_in_the_matrix__repeated"
ACTIONS = ["noop", "fwd", "right", "back", "left", "turn_l", "turn_r", "interact"]


def load_actor(path: Path, spec) -> tuple[torch.nn.Module, int]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    algo = get_algorithm(ckpt["algorithm"])
    cfg = config_as_built(algo, ckpt["config"])
    actor = algo.module.build_actor(cfg, spec)
    actor.load_state_dict(ckpt["learner"]["actor"])
    actor.eval()
    return actor, int(ckpt["counters"]["t_env"])


@torch.no_grad()
def behaviour(actor: torch.nn.Module, episodes_per_env: int, num_envs: int, seed: int) -> dict[str, float]:
    env = make_env("meltingpot", SCENARIO, num_envs=num_envs, seed=seed)
    try:
        gen = torch.Generator()
        gen.manual_seed(seed)
        acting = _Acting(env, SelfPlayPlayers(actor), gen, greedy=False)
        acting.begin(env.reset(seed=seed))
        B, N = env.spec.num_envs, env.spec.n_agents
        done_eps = torch.zeros(B, dtype=torch.long)
        returns, interactions, payoffs, stag_shares = [], [], [], []
        ep_inter = torch.zeros(B)
        action_counts = torch.zeros(env.spec.n_actions)
        inventory = torch.zeros(B, N, 2)
        while bool((done_eps < episodes_per_env).any()):
            rec = acting.act(record_key=None)
            live = (done_eps < episodes_per_env).view(B, 1).expand(B, N)
            action_counts += torch.bincount(rec["actions"][live], minlength=env.spec.n_actions).float()
            out, eps = acting.step(rec["actions"])
            hit = (out.reward != 0).any(-1)
            for b in hit.nonzero().squeeze(-1).tolist():
                if done_eps[b] < episodes_per_env:
                    ep_inter[b] += 1
                    payoffs.append(out.reward[b].tolist())
                    inv = inventory[b]
                    total = inv.sum(-1).clamp_min(1e-9)
                    stag_shares.extend((inv[:, 0] / total).tolist())
                    inventory[b] = 0.0
            # Inventories are reset when the results are delivered (after the interaction's freeze):
            # keep each player's last non-empty one, which is what it brought to the interaction.
            now = out.obs_extra["INVENTORY"].reshape(B, N, -1)[..., :2].float()
            held = now.sum(-1, keepdim=True) > 0
            inventory = torch.where(held, now, inventory)
            if eps is not None:
                idx = out.done.nonzero().squeeze(-1).tolist()
                for j, b in enumerate(idx):
                    if done_eps[b] < episodes_per_env:
                        returns.append(float(eps.returns[j].mean()))
                        interactions.append(float(ep_inter[b]))
                        done_eps[b] += 1
                    ep_inter[b] = 0
        freqs = action_counts / action_counts.sum()
        flat_payoffs = [p for pair in payoffs for p in pair]
        return {
            "return": sum(returns) / len(returns),
            "interactions": sum(interactions) / len(interactions),
            "payoff": sum(flat_payoffs) / max(1, len(flat_payoffs)),
            "stag_share": sum(stag_shares) / max(1, len(stag_shares)),
            "episodes": len(returns),
            **{f"p_{name}": float(f) for name, f in zip(ACTIONS, freqs)},
        }
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--episodes", type=int, default=16, help="episodes per policy (split over the copies)")
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random", action="store_true", help="also two uniform-random players")
    args = parser.parse_args()
    per_env = max(1, args.episodes // args.num_envs)
    probe = make_env("meltingpot", SCENARIO, num_envs=1, seed=0)  # the spec the actors are built for
    spec = probe.spec
    probe.close()
    rows = []
    if args.random:
        rows.append(
            ("random", 0, behaviour(UniformRandomActor(spec.n_actions, args.seed), per_env, args.num_envs, args.seed))
        )
    for path in args.checkpoints:
        actor, t_env = load_actor(path, spec)
        rows.append((path.name, t_env, behaviour(actor, per_env, args.num_envs, args.seed)))
    print("policy | env steps | return | interactions/ep | payoff/interaction | stag share | " + " ".join(ACTIONS))
    for name, t_env, r in sorted(rows, key=lambda row: (row[0].split("-")[0], row[1])):
        acts = " ".join(f"{r['p_' + a]:.2f}" for a in ACTIONS)
        print(
            f"{name} | {t_env} | {r['return']:.2f} | {r['interactions']:.2f} | {r['payoff']:.2f} | "
            f"{r['stag_share']:.2f} | {acts}"
        )


if __name__ == "__main__":
    main()
