"""RandNet: network randomization (Lee, Lee, Shin and Lee, ICLR 2020), on MAPPO.

A random 3x3 convolution (C -> C channels, C = the image's, no bias, Xavier-normal weights so the
randomized image keeps the clean one's variance) is applied to the [0, 1] image in front of the
actor's CNN, at pixel level (``randomize_at``): rollouts store the observation at full resolution
and the actor's encoder pools it by ``downsample`` only after the random layer, so the layer
perturbs textures within a sprite, as the paper's layer acts on the raw frame. Sources: the paper
and its authors' code (github.com/pokaxpoka/netrand, ``random_ppo2.py`` / ``policies.py``), read for
this reconstruction.

* Training: every iteration (``before_rollout``) draws a new layer from the run's generator. With
  probability ``clean_prob`` the whole iteration (rollout and PPO update) uses the clean image
  instead, else the draw; the rollout's actor and that iteration's update see the same draw (it is
  held by the learner until the next ``before_rollout``). As in the authors' code, the choice is
  made once per iteration, not per observation.
* Feature matching: ``feature_match_coef`` * MSE between the penultimate layer's features (the
  paper's f, the layer below the policy head: here the GRU's output through MAPPO's LayerNorm, run over the same chunk from the
  same stored hidden state) of the randomized and of the clean input, the clean side detached
  (authors' code: ``stop_gradient`` on the clean features), averaged over feature units and the
  learner's agent steps (``feature_match_layer``: "encoder" matches the encoder's output instead).
  It is added in clean iterations too (with the iteration's draw), as the authors' code does.
* Test time (evaluation and the saved ``policy.pt``): :class:`MonteCarloActor` averages the action
  probabilities over ``mc_samples`` draws and returns the log of the average. The draws are made
  once, when the learner is built (from the run's seed), and saved with the policy, so a loaded
  policy is a deterministic function of its inputs; each draw keeps its own GRU state across an
  episode, as a training rollout keeps one draw throughout (*choice* for a recurrent actor: the
  paper's agents average per observation).

The centralised critic sees the clean global state (*choice*: the critic is not used at test time,
and randomization is about the acting policy's visual robustness). Its stored state and the clean
path of the actor are exactly MAPPO's (the encoder pools the clean image on the 0-255 scale and
rounds, as the stored form of the other learners; randomized images are pooled unrounded).
``randomize_at: "cells"`` keeps the earlier reconstruction: the layer on the pooled image (one value
per Melting Pot grid cell, blending neighbouring cells). Cost: rollouts hold 64x the image bytes; the
random layer and the pooling run as one strided convolution (:func:`pooled_kernel`, the same linear
map), and an update computes the pooled clean and randomized images once, not once per PPO pass
(measured in docs/methods.md). Since the pooling after the layer is linear, what reaches the CNN is
a per-cell colour mix plus the contribution of each cell's border pixels (a texture inside a cell
counts through its mean); the paper's CNN sees the full frame (``downsample: 1``, at many times the cost).

Vector observations (SMAX, Predator-Prey). The paper randomizes images only; for a vector the
analogous random layer is a random linear map D -> D (*choice*; ``randomize_at`` does not apply):
``W`` [D, D], no bias, Xavier-normal
(std sqrt(2 / (D + D)), so E|Wx|^2 = |x|^2, the variance-keeping property of the image layer), applied
to the flattened observation vector the actor stores, before the encoder's FC (the per-agent extras and
the one-hot id stay clean, as they do beside the image). A vector's entries have no spatial layout, so
a full linear map stands in for the 3x3 convolution, which is itself a linear map mixing the channels
of neighbouring pixels. Everything else is unchanged: the re-draw every iteration, ``clean_prob``,
feature matching on the encoder's features and the Monte Carlo test-time actor with saved draws. No
config field selects this: the only other option, no vector randomization, would make RandNet plain
MAPPO with a Monte Carlo average over identical policies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from envs.base import EnvSpec
from marl.config import ConfigError
from marl.policy.config import PolicyLearnerConfig
from marl.policy.learner import KIND, PolicyLearner
from marl.policy.networks import ActInput, ObsEncoder, RecurrentActor, flat_input, is_image, masked_logits, run_gru
from marl.policy.runner import Episodes, Rollout
from marl.policy.ppo import masked_mean

__all__ = [
    "KIND",
    "Config",
    "Learner",
    "build_actor",
    "RandNetActor",
    "MonteCarloActor",
    "RandomConv",
    "PerDrawConv",
    "pooled_kernel",
    "RandomLinear",
    "draw_random_conv",
    "draw_random_linear",
    "random_layer",
    "encode",
    "feature_match_loss",
]

KERNEL = 3  # the paper's random layer is a single 3x3 convolution


@dataclass
class Config(PolicyLearnerConfig):
    # Probability that an iteration trains on clean images. The paper's alpha = 0.1 (the random
    # layer is the identity with probability alpha). Note: the authors' code draws
    # ``clean_flag = rand > real_thres`` with real_thres 0.1, which makes clean iterations the 90%
    # case; we follow the paper's text.
    clean_prob: float = 0.1
    feature_match_coef: float = 0.002  # beta, the paper's and its code's fm_coeff
    mc_samples: int = 10  # M, the paper's Monte Carlo draws at test time
    # Where the random layer acts on images. "pixels": on the observation at full resolution, before
    # the ``downsample`` pooling (the paper's layer acts on the input frame, perturbing textures);
    # "cells": on the pooled image, one value per Melting Pot grid cell (this suite's earlier
    # reconstruction, cheaper on a CPU).
    randomize_at: Literal["pixels", "cells"] = "pixels"  # the paper: the random layer on the input frame
    # The features matched between the randomized and the clean input. "penultimate": the layer
    # under the policy head (the paper's feature-matching loss on f's penultimate layer; here the
    # normalised GRU output); "encoder": the encoder's output (the earlier reconstruction).
    feature_match_layer: Literal["penultimate", "encoder"] = "penultimate"  # the paper: penultimate features

    def validate(self) -> None:
        """Rules beyond the field types (build_config calls this, so a manifest is checked up front)."""
        if not 0.0 <= self.clean_prob <= 1.0:
            raise ConfigError(f"randnet: clean_prob must be in [0, 1], got {self.clean_prob}")
        if self.mc_samples < 1:
            raise ConfigError(f"randnet: mc_samples must be >= 1, got {self.mc_samples}")
        if self.feature_match_coef < 0:
            raise ConfigError(f"randnet: feature_match_coef must be >= 0, got {self.feature_match_coef}")


def draw_random_conv(
    channels: int,
    generator: torch.Generator | None = None,
    samples: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Xavier-normal weights of a C -> C 3x3 convolution: [C, C, 3, 3], or [samples, C, C, 3, 3].
    std = sqrt(2 / (fan_in + fan_out)) with fan_in = fan_out = C * 3 * 3."""
    fan = channels * KERNEL * KERNEL
    shape = (channels, channels, KERNEL, KERNEL) if samples is None else (samples, channels, channels, KERNEL, KERNEL)
    if device is None:
        device = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, device=device) * math.sqrt(2.0 / (fan + fan))


def pooled_kernel(weight: torch.Tensor, pool: int) -> torch.Tensor:
    """The 3x3 convolution (padding 1) followed by ``pool`` x ``pool`` average pooling, as one
    convolution of stride ``pool``: weights [..., C, C, 3, 3] -> [..., C, C, 3 + pool - 1, 3 + pool - 1]
    (each 3x3 kernel convolved with the box filter 1 / pool^2). Both are linear, so this is the same
    map, exactly up to float rounding, at a fraction of the cost on a CPU (the pixel-level layer of
    a 40x40 image is 5x cheaper this way)."""
    lead = weight.shape[:-2]
    box = torch.full((1, 1, pool, pool), 1.0 / (pool * pool), dtype=weight.dtype, device=weight.device)
    k = F.conv_transpose2d(weight.reshape(-1, 1, KERNEL, KERNEL), box)
    return k.reshape(*lead, KERNEL + pool - 1, KERNEL + pool - 1)


class RandomConv:
    """image_transform for ObsEncoder: one random layer on [M, C, H, W] (shape kept); ``pooled``:
    the layer followed by average pooling, fused (see :func:`pooled_kernel`)."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self._fused: dict[tuple[int, float], torch.Tensor] = {}

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return F.conv2d(img, self.weight, padding=KERNEL // 2)

    def pooled(self, img: torch.Tensor, pool: int, scale: float = 1.0) -> torch.Tensor:
        """avg_pool2d(self(scale * img), pool), as one strided convolution."""
        key = (pool, scale)
        if key not in self._fused:
            self._fused[key] = pooled_kernel(self.weight, pool) * scale
        return F.conv2d(img, self._fused[key], stride=pool, padding=KERNEL // 2)


def per_draw_conv(img: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """img [S*R, C, H, W] in S blocks of R rows -> block s through draws[s] ([S, C, C, 3, 3]), in one
    grouped convolution."""
    S, C = draws.shape[0], draws.shape[1]
    R, H, W = img.shape[0] // S, img.shape[-2], img.shape[-1]
    x = img.reshape(S, R, C, H, W).transpose(0, 1).reshape(R, S * C, H, W)
    y = F.conv2d(x, draws.reshape(S * C, C, KERNEL, KERNEL), padding=KERNEL // 2, groups=S)
    return y.reshape(R, S, C, H, W).transpose(0, 1).reshape(S * R, C, H, W)


class PerDrawConv:
    """image_transform of the Monte Carlo actor: S draws, one per block of rows (:func:`per_draw_conv`);
    ``pooled``: followed by average pooling, fused as for :class:`RandomConv`."""

    def __init__(self, draws: torch.Tensor):
        self.draws = draws

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return per_draw_conv(img, self.draws)

    def pooled(self, img: torch.Tensor, pool: int, scale: float = 1.0) -> torch.Tensor:
        S, C = self.draws.shape[0], self.draws.shape[1]
        R, H, W = img.shape[0] // S, img.shape[-2], img.shape[-1]
        k = pooled_kernel(self.draws, pool) * scale  # [S, C, C, K', K']
        x = img.reshape(S, R, C, H, W).transpose(0, 1).reshape(R, S * C, H, W)
        y = F.conv2d(x, k.reshape(S * C, C, *k.shape[-2:]), stride=pool, padding=KERNEL // 2, groups=S)
        return y.reshape(R, S, C, *y.shape[-2:]).transpose(0, 1).reshape(S * R, C, *y.shape[-2:])


class _Prepooled:
    """image_transform for images already randomized (or not) and pooled: the update's cache
    (:meth:`Learner.train_step`) holds them, so the encoder only feeds them to its CNN."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("pre-pooled images go through pooled(), with the encoder's pool > 1")

    def pooled(self, img: torch.Tensor, pool: int, scale: float = 1.0) -> torch.Tensor:
        return img


PREPOOLED = _Prepooled()


def draw_random_linear(
    dim: int,
    generator: torch.Generator | None = None,
    samples: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Xavier-normal weights of a D -> D linear map (no bias): [D, D], or [samples, D, D].
    std = sqrt(2 / (fan_in + fan_out)) with fan_in = fan_out = D."""
    shape = (dim, dim) if samples is None else (samples, dim, dim)
    if device is None:
        device = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, device=device) * math.sqrt(2.0 / (dim + dim))


class RandomLinear:
    """The vector observation's random layer: x [M, D] -> x W^T [M, D]."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def per_draw_linear(x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """x [S*R, D] in S blocks of R rows -> block s through draws[s] ([S, D, D]), in one batched product."""
    S, D = draws.shape[0], draws.shape[-1]
    return torch.bmm(x.reshape(S, -1, D), draws.transpose(1, 2)).reshape(-1, D)


def random_layer(weight: torch.Tensor) -> RandomConv | RandomLinear:
    """The random layer of a draw: a convolution for [C, C, 3, 3] weights, a linear map for [D, D]."""
    return RandomConv(weight) if weight.dim() == 4 else RandomLinear(weight)


def encode(
    encoder: ObsEncoder,
    obs: torch.Tensor,
    extra: torch.Tensor,
    ids: torch.Tensor,
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """Encoder features with the random layer ``transform`` (None: the clean observation). Images: on
    the [0, 1] image before the CNN. Vectors: on the flattened stored observation [M, D] before the FC."""
    if transform is None or encoder.image:
        return encoder(obs, extra, ids, image_transform=transform)
    flat = obs.reshape(obs.shape[0], -1).float()
    return encoder(transform(flat).reshape(obs.shape), extra, ids)


def feature_match_loss(randomized: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over feature units and the masked rows; no gradient to ``clean``."""
    return masked_mean(((randomized - clean.detach()) ** 2).mean(-1), mask)


class RandNetActor(RecurrentActor):
    """The training actor: MAPPO's, with ``transform`` (the iteration's random layer, or None for a
    clean iteration) applied to the observation (see :func:`encode`); with ``randomize_at ==
    "pixels"`` its encoder pools the image itself, after the layer. Saved state = RecurrentActor's."""

    def __init__(self, spec: EnvSpec, cfg: Config):
        super().__init__(spec, cfg, pool_in_encoder=cfg.randomize_at == "pixels")
        self.transform: RandomConv | RandomLinear | None = None

    def features(self, inp: ActInput) -> torch.Tensor:
        return encode(self.encoder, inp.obs, inp.extra, inp.agent_ids, self.transform)


class MonteCarloActor(nn.Module):
    """Test-time RandNet: pi(a) = mean over S fixed draws of pi(a | draw s); logits = log of that mean.

    The hidden state holds one GRU state per draw: [rows, S * H]."""

    def __init__(self, actor: RecurrentActor, draws: torch.Tensor):
        super().__init__()
        self.actor = actor
        self.register_buffer("draws", draws)

    @property
    def encoder(self) -> ObsEncoder:  # the runner reads its downsampling factor
        return self.actor.encoder

    @property
    def hidden_dim(self) -> int:
        return self.draws.shape[0] * self.actor.hidden_dim

    def initial_hidden(self, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(rows, self.hidden_dim, device=device)

    def _per_draw_features(self, inp: ActInput) -> torch.Tensor:
        """Encoder features of every draw: flat inp [R, ...] -> [S*R, H] (S blocks of R rows)."""
        S = self.draws.shape[0]
        rep = lambda x: x.repeat(S, *([1] * (x.dim() - 1)))  # noqa: E731
        draws = self.draws
        transform = PerDrawConv(draws) if self.actor.encoder.image else (lambda x: per_draw_linear(x, draws))
        return encode(self.actor.encoder, rep(inp.obs), rep(inp.extra), rep(inp.agent_ids), transform)

    def _average(self, hidden: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        """hidden [..., S, R, H], avail [..., R, A] -> log mean_s softmax(head) [..., R, A], masked."""
        S = self.draws.shape[0]
        logp = F.log_softmax(self.actor.logits(hidden, avail.unsqueeze(-3)), -1)
        return masked_logits(torch.logsumexp(logp, -3) - math.log(S), avail)

    def act(self, inp: ActInput, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        S, H, R = self.draws.shape[0], self.actor.hidden_dim, inp.obs.shape[0]
        feats = self._per_draw_features(inp)
        h_draws = h.reshape(R, S, H).transpose(0, 1).reshape(S * R, H)
        h_new = self.actor.gru(feats, h_draws).view(S, R, H)
        return self._average(h_new, inp.avail), h_new.transpose(0, 1).reshape(R, S * H)

    def sequence(self, inp: ActInput, h0: torch.Tensor, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        """inp fields [L, R, ...]; h0 [R, S*H]; starts [L, R] -> {"logits": [L, R, A], "hidden": [L, R, S*H]}."""
        S, H = self.draws.shape[0], self.actor.hidden_dim
        L, R = starts.shape
        feats = self._per_draw_features(flat_input(inp, L * R)).view(S, L, R, H).transpose(0, 1).reshape(L, S * R, H)
        h_draws = h0.reshape(R, S, H).transpose(0, 1).reshape(S * R, H)
        hidden = run_gru(self.actor.gru, feats, h_draws, starts.repeat(1, S)).view(L, S, R, H)
        return {"logits": self._average(hidden, inp.avail), "hidden": hidden.transpose(1, 2).reshape(L, R, S * H)}


def layer_shape(spec: EnvSpec) -> tuple[int, ...]:
    """Shape of one draw: [C, C, 3, 3] for images (C channels), [D, D] for vectors (D = flat size)."""
    if is_image(spec.obs_shape):
        C = spec.obs_shape[-1]
        return (C, C, KERNEL, KERNEL)
    D = int(math.prod(spec.obs_shape))
    return (D, D)


def draw_layer(spec: EnvSpec, generator: torch.Generator | None = None, samples: int | None = None) -> torch.Tensor:
    """One draw (or ``samples`` draws) of ``spec``'s random layer."""
    if is_image(spec.obs_shape):
        return draw_random_conv(spec.obs_shape[-1], generator, samples)
    return draw_random_linear(layer_shape(spec)[0], generator, samples)


def build_actor(cfg: Config, spec: EnvSpec) -> nn.Module:
    """The test-time actor (Monte Carlo over ``mc_samples`` draws). Its draws are placeholders (zeros)
    until a policy artifact's state is loaded into it."""
    actor = RecurrentActor(spec, cfg, pool_in_encoder=cfg.randomize_at == "pixels")
    return MonteCarloActor(actor, torch.zeros(cfg.mc_samples, *layer_shape(spec)))


def _build_training_actor(cfg: Config, spec: EnvSpec) -> nn.Module:
    return RandNetActor(spec, cfg)


class Learner(PolicyLearner):
    actor_builder = staticmethod(_build_training_actor)

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str = "cpu"):
        cfg.validate()  # again, for configs built by hand rather than by build_config
        super().__init__(cfg, spec, device)
        # Test-time draws and the first iteration's draw come from the global RNG, seeded by the run.
        draws = draw_layer(spec, samples=cfg.mc_samples).to(self.device)
        self.mc_actor = MonteCarloActor(self.actor, draws)
        self._set_draw(draw_layer(spec).to(self.device), clean=False)
        self.prepool_update = True  # cache the update's pooled images (False: recompute every pass; tests)
        self._prepooled = False

    def _set_draw(self, weight: torch.Tensor, clean: bool) -> None:
        self.draw, self.clean = weight, clean
        self.actor.transform = None if clean else random_layer(weight)

    def before_rollout(self, generator: torch.Generator) -> None:
        clean = bool(torch.rand((), generator=generator, device=generator.device) < self.cfg.clean_prob)
        self._set_draw(draw_layer(self.spec, generator).to(self.device), clean)

    def eval_module(self) -> nn.Module:
        return self.mc_actor

    def _sequence_with(
        self, transform: RandomConv | RandomLinear | None, inp: ActInput, h0: torch.Tensor, starts: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        held = self.actor.transform
        self.actor.transform = transform
        try:
            return self.actor.sequence(inp, h0, starts)
        finally:
            self.actor.transform = held

    def prepools(self) -> bool:
        """Whether an update caches the pooled clean and randomized images (pixel-level images)."""
        return self.prepool_update and self.actor.encoder.image and self.actor.encoder.pool > 1

    def train_step(self, r: Rollout, episodes: Episodes, generator: torch.Generator) -> dict[str, float]:
        """PPO on ``r``. With pixel-level images, the iteration's draw and the rollout are fixed for
        the whole update, so the pooled clean and randomized images are computed once (not once per
        epoch); the losses are the same."""
        if not self.prepools():
            return super().train_step(r, episodes, generator)
        T, B, N = r.obs.shape[:3]
        flat = r.obs.reshape(T * B * N, *r.obs.shape[3:]).float()
        pool = self.actor.encoder.pool
        clean = F.avg_pool2d(flat, pool).round_().div_(255.0)
        randomized = RandomConv(self.draw).pooled(flat, pool, 1.0 / 255.0)
        del flat
        views = torch.stack([clean, randomized], 1)
        self._prepooled = True
        try:
            return super().train_step(replace(r, obs=views.view(T, B, N, *views.shape[1:])), episodes, generator)
        finally:
            self._prepooled = False

    def actor_sequence(self, inp: ActInput, h0: torch.Tensor, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        L, M = starts.shape
        if self._prepooled:  # inp.obs [L, M, 2, C, h, w]: the pooled clean (0) and randomized (1) images
            clean_inp, rand_inp = (replace(inp, obs=inp.obs[:, :, i]) for i in (0, 1))
            inp, other_inp = (clean_inp, rand_inp) if self.clean else (rand_inp, clean_inp)
            own_transform: Any = PREPOOLED
            other_transform: Any = PREPOOLED
        else:
            other_inp, own_transform = inp, self.actor.transform
            # The other input: the draw in a clean iteration (with gradient: it is the matched side),
            # the clean image otherwise (no gradient needed: the loss detaches it).
            other_transform = random_layer(self.draw) if self.clean else None
        out = self._sequence_with(own_transform, inp, h0, starts)  # this iteration's input (draw or clean)
        if self.cfg.feature_match_layer == "penultimate":
            # The layer under the policy head: the (normalised) GRU output, over the same chunk from the same h0.
            if self.clean:
                other = self._sequence_with(other_transform, other_inp, h0, starts)["penultimate"]
            else:
                with torch.no_grad():
                    other = self._sequence_with(other_transform, other_inp, h0, starts)["penultimate"]
            mine = out["penultimate"]
        else:
            flat = flat_input(other_inp, L * M)
            with torch.set_grad_enabled(self.clean and torch.is_grad_enabled()):
                other = encode(self.actor.encoder, flat.obs, flat.extra, flat.agent_ids, other_transform).view(L, M, -1)
            mine = out["features"]
        if self.clean:
            out["randomized_features"], out["clean_features"] = other, mine
        else:
            out["randomized_features"], out["clean_features"] = mine, other
        return out

    def extra_actor_losses(
        self, out: dict[str, torch.Tensor], inp: ActInput, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        fm = feature_match_loss(out["randomized_features"], out["clean_features"], mask)
        return {"feature_match_loss": self.cfg.feature_match_coef * fm}

    def after_update(self, rollout: Rollout, episodes: Episodes, generator: torch.Generator) -> dict[str, float]:
        return {"clean_iteration": float(self.clean)}

    def extra_state(self) -> dict[str, Any]:
        return {"draw": self.draw, "clean": self.clean, "mc_draws": self.mc_actor.draws}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.mc_actor.draws.copy_(state["mc_draws"])
        self._set_draw(state["draw"].to(self.device), bool(state["clean"]))
