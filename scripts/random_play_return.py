"""The floor a trained policy's return is read against: every player uniformly random.

    .venv/bin/python scripts/random_play_return.py meltingpot stag_hunt_in_the_matrix__repeated --episodes 32

Prints the mean per-capita episode return over ``--episodes`` finished episodes, its standard
deviation and standard error. bidist_stag_hunt's budget was chosen against it (self-play's test
return clearly above this; suites/bidist_stag_hunt.yaml).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import envs  # noqa: E402
from marl.value.controller import uniform_available_actions  # noqa: E402


def random_play_returns(family: str, scenario: str, episodes: int, num_envs: int = 2, seed: int = 12345) -> list[float]:
    env = envs.make_env(family, scenario, num_envs=num_envs, seed=seed)
    try:
        generator = torch.Generator().manual_seed(seed)
        out = env.reset(seed=seed)
        running = torch.zeros(num_envs, env.spec.n_agents)
        finished: list[float] = []
        while len(finished) < episodes:
            out = env.step(uniform_available_actions(out.avail_actions, generator))
            running += out.reward
            for i in (out.terminated | out.truncated).nonzero().flatten().tolist():
                finished.append(float(running[i].mean()))
                running[i] = 0.0
        return finished[:episodes]
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family")
    parser.add_argument("scenario")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()
    returns = random_play_returns(args.family, args.scenario, args.episodes, seed=args.seed)
    sd = statistics.pstdev(returns)
    print(
        f"{args.family}/{args.scenario}: uniform-random play, {len(returns)} episodes: per-capita return "
        f"{statistics.mean(returns):.3f} (sd {sd:.3f}, s.e. {sd / len(returns) ** 0.5:.3f})"
    )


if __name__ == "__main__":  # Melting Pot's workers start through a forkserver: guard the entry point
    main()
