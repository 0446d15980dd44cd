"""Networks of the on-policy learners: observation encoders, the recurrent actor and the
centralised recurrent critic (MAPPO's architecture, shared by all agents).

Observations come in two kinds:

* images (Melting Pot): uint8 ``[..., H, W, C]``. :meth:`ObsEncoder.preprocess` average-pools them by
  ``downsample`` and moves channels first, still uint8 (``[..., C, H/d, W/d]``), which is what rollouts
  store; the CNN divides by 255 only inside the forward pass;
* vectors (SMAX, Predator-Prey): float ``[..., D]``, used as they are.

Per-agent extra observations (Melting Pot's INVENTORY, READY_TO_SHOOT) are flattened, concatenated
and joined to the image features.

Every recurrent module here has the same acting interface (:class:`ActInput` in, logits and new
hidden state out), so a rollout can mix policies of different algorithms in one episode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from envs.base import EnvSpec

NEG_INF = -1e10


def init_layer(layer: nn.Module, gain: float = math.sqrt(2), orthogonal: bool = True) -> nn.Module:
    if orthogonal and isinstance(layer, (nn.Linear, nn.Conv2d)):
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return layer


def init_gru(cell: nn.GRUCell, orthogonal: bool = True) -> nn.GRUCell:
    """on-policy's RNNLayer: orthogonal weight matrices, zero biases (PyTorch's default otherwise)."""
    if orthogonal:
        nn.init.orthogonal_(cell.weight_ih)
        nn.init.orthogonal_(cell.weight_hh)
        nn.init.zeros_(cell.bias_ih)
        nn.init.zeros_(cell.bias_hh)
    return cell


def output_norm(dim: int, layer_norm: bool) -> nn.Module:
    """on-policy's LayerNorm on the GRU output (what the heads read; the carried state stays raw)."""
    return nn.LayerNorm(dim) if layer_norm else nn.Identity()


def is_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3


def preprocess_image(x: torch.Tensor, downsample: int) -> torch.Tensor:
    """uint8 [..., H, W, C] -> uint8 [..., C, H//d, W//d] (mean over d x d blocks, rounded)."""
    lead = x.shape[:-3]
    H, W, C = x.shape[-3:]
    x = x.reshape(-1, H, W, C).permute(0, 3, 1, 2)
    if downsample > 1:
        x = F.avg_pool2d(x.float(), downsample).round_().to(torch.uint8)
    return x.contiguous().reshape(*lead, C, H // downsample, W // downsample)


class ObsEncoder(nn.Module):
    """Image (CNN) or vector input, plus flattened extras and an optional one-hot id -> ``fc_layers``
    x (FC -> ReLU). With ``layer_norm``, a vector input is normalised first and each FC's output after
    its ReLU (on-policy's MLPBase); an image input gets none (on-policy's CNN base)."""

    def __init__(
        self,
        shape: tuple[int, ...],
        extra_dim: int,
        id_dim: int,
        hidden_dim: int,
        downsample: int = 8,
        channels: list[int] | tuple[int, ...] = (32,),
        kernel: int = 3,
        stride: int = 1,
        orthogonal: bool = True,
        pool: int = 1,
        fc_layers: int = 1,
        layer_norm: bool = False,
    ):
        super().__init__()
        if fc_layers < 1:
            raise ValueError(f"an encoder needs at least one FC layer, got fc_layers={fc_layers}")
        # ``downsample``: the pooling of what rollouts store (preprocess); ``pool``: a further pooling
        # inside the forward pass, after any ``image_transform`` (RandNet's pixel-level random layer
        # sees the image at the stored resolution, the CNN the pooled one).
        self.image, self.downsample, self.pool, self.id_dim = is_image(shape), downsample, pool, id_dim
        if self.image:
            H, W, C = shape
            h, w = H // (downsample * pool), W // (downsample * pool)
            layers: list[nn.Module] = []
            c_in = C
            for c in channels:  # MAPPO's CNNBase: valid (unpadded) convolutions
                if min(h, w) < kernel:
                    raise ValueError(
                        f"image of {H}x{W} downsampled by {downsample * pool} is {h}x{w}, smaller than the "
                        f"{kernel}x{kernel} kernel; lower 'downsample' or the number of conv layers"
                    )
                layers += [init_layer(nn.Conv2d(c_in, c, kernel, stride=stride), orthogonal=orthogonal), nn.ReLU()]
                h, w = (h - kernel) // stride + 1, (w - kernel) // stride + 1
                c_in = c
            self.cnn = nn.Sequential(*layers, nn.Flatten())
            flat = c_in * h * w
            self.stored_shape: tuple[int, ...] = (C, H // downsample, W // downsample)
        else:
            self.cnn = None
            flat = int(math.prod(shape))
            self.stored_shape = tuple(shape)
        in_dim = flat + extra_dim + id_dim
        norm = layer_norm and not self.image
        self.input_norm = nn.LayerNorm(in_dim) if norm else nn.Identity()
        # The first FC keeps its name ``fc`` (artifacts of the one-layer encoder load unchanged).
        self.fc = init_layer(nn.Linear(in_dim, hidden_dim), orthogonal=orthogonal)
        self.fc_norm = nn.LayerNorm(hidden_dim) if norm else nn.Identity()
        self.more_fc = nn.ModuleList(
            nn.Sequential(
                init_layer(nn.Linear(hidden_dim, hidden_dim), orthogonal=orthogonal),
                nn.ReLU(),
                nn.LayerNorm(hidden_dim) if norm else nn.Identity(),
            )
            for _ in range(fc_layers - 1)
        )

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Raw env observation -> what rollouts store (see module docstring)."""
        return preprocess_image(x, self.downsample) if self.image else x.float()

    def image_features(self, x: torch.Tensor, image_transform: Callable | None = None) -> torch.Tensor:
        """x: stored form [M, ...] -> [M, F]. ``image_transform`` (RandNet's random convolution)
        is applied to the float image in [0, 1] at the stored resolution, then the image is pooled by
        ``pool`` (if > 1) and fed to the CNN. Without a transform the pooling is on the 0-255 scale,
        rounded, exactly as :func:`preprocess_image` would have stored it."""
        if not self.image:
            return x.reshape(x.shape[0], -1)
        if image_transform is None:
            img = x.float()
            if self.pool > 1:
                img = F.avg_pool2d(img, self.pool).round_()
            return self.cnn(img.div_(255.0))
        if self.pool > 1 and hasattr(image_transform, "pooled"):  # the layer and the pooling in one pass
            return self.cnn(image_transform.pooled(x.float(), self.pool, 1.0 / 255.0))
        img = image_transform(x.float().div_(255.0))
        if self.pool > 1:
            img = F.avg_pool2d(img, self.pool)
        return self.cnn(img)

    def forward(
        self,
        x: torch.Tensor,
        extra: torch.Tensor | None,
        ids: torch.Tensor | None,
        image_transform: Callable | None = None,
    ) -> torch.Tensor:
        """x [M, *stored_shape], extra [M, E] or None, ids [M] long or None -> [M, hidden]."""
        parts = [self.image_features(x, image_transform)]
        if extra is not None and extra.shape[-1] > 0:
            parts.append(extra)
        if self.id_dim:
            parts.append(F.one_hot(ids, self.id_dim).to(parts[0].dtype))
        x = self.fc_norm(F.relu(self.fc(self.input_norm(torch.cat(parts, -1)))))
        for layer in self.more_fc:
            x = layer(x)
        return x


def extra_dim(spec: EnvSpec) -> int:
    return sum(int(math.prod(s)) for s in spec.extra_obs_shapes.values())


def flatten_extra(obs_extra: Mapping[str, torch.Tensor], lead: int, spec: EnvSpec) -> torch.Tensor:
    """Concatenate the extras (sorted by name) into [..., E] float; ``lead`` leading dims are kept."""
    keys = sorted(spec.extra_obs_shapes)
    if not keys:
        ref = next(iter(obs_extra.values()), None)
        return torch.zeros(0) if ref is None else ref.new_zeros(*ref.shape[:lead], 0)
    return torch.cat([obs_extra[k].reshape(*obs_extra[k].shape[:lead], -1).float() for k in keys], -1)


@dataclass
class ActInput:
    """One acting step for M rows (a row = one agent slot of one env copy)."""

    obs: torch.Tensor  # [M, *stored obs shape]
    extra: torch.Tensor  # [M, E]
    agent_ids: torch.Tensor  # [M] long, the slot index within its env copy
    avail: torch.Tensor  # [M, A] bool
    state: torch.Tensor  # [M, *stored state shape] (privileged; no actor reads it, OPRE's p is in its critic)


def masked_logits(logits: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~avail, NEG_INF)


class RecurrentActor(nn.Module):
    """MAPPO's recurrent actor: encoder -> GRU -> policy logits (shared by all agents).

    ``act`` runs one step for M rows; ``sequence`` runs [L, M] steps for training, resetting the
    hidden state where ``starts`` is true (the first step of an episode)."""

    def __init__(self, spec: EnvSpec, cfg, n_outputs: int | None = None, pool_in_encoder: bool = False):
        """``pool_in_encoder``: rollouts store the image at full resolution and the encoder pools it
        by ``cfg.downsample`` itself (RandNet's pixel-level randomization); same parameters either way."""
        super().__init__()
        self.hidden_dim = cfg.hidden_dim
        self.n_actions = spec.n_actions
        stored, pool = (1, cfg.downsample) if pool_in_encoder else (cfg.downsample, 1)
        self.encoder = ObsEncoder(
            spec.obs_shape,
            extra_dim(spec),
            spec.n_agents if cfg.actor_agent_id else 0,
            cfg.hidden_dim,
            stored,
            cfg.cnn_channels,
            cfg.cnn_kernel,
            1,
            cfg.orthogonal_init,
            pool=pool,
            fc_layers=cfg.actor_fc_layers,
            layer_norm=cfg.layer_norm,
        )
        self.gru = init_gru(nn.GRUCell(cfg.hidden_dim, cfg.hidden_dim), cfg.orthogonal_init)
        self.out_norm = output_norm(cfg.hidden_dim, cfg.layer_norm)
        self.head = init_layer(nn.Linear(cfg.hidden_dim, n_outputs or spec.n_actions), 0.01, cfg.orthogonal_init)

    def initial_hidden(self, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(rows, self.hidden_dim, device=device)

    def features(self, inp: ActInput) -> torch.Tensor:
        return self.encoder(inp.obs, inp.extra, inp.agent_ids)

    def logits(self, hidden: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        """GRU output [..., H] -> masked logits [..., A] (through the output LayerNorm)."""
        return masked_logits(self.head(self.out_norm(hidden)), avail)

    def act(self, inp: ActInput, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (masked logits [M, A], new hidden [M, H])."""
        h = self.gru(self.features(inp), h)
        return self.logits(h, inp.avail), h

    def sequence(self, inp: ActInput, h0: torch.Tensor, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        """inp fields [L, M, ...] (flattened to L*M for the encoder); h0 [M, H]; starts [L, M] bool.
        Returns {"logits": [L, M, A] masked, "hidden": [L, M, H] (the GRU's), "penultimate": [L, M, H]
        (what the policy head reads: the normalised GRU output), "features": [L, M, H] (the encoder's)}."""
        L, M = starts.shape
        feats = self.features(flat_input(inp, L * M)).view(L, M, -1)
        hidden = run_gru(self.gru, feats, h0, starts)
        penultimate = self.out_norm(hidden)
        return {
            "logits": masked_logits(self.head(penultimate), inp.avail),
            "hidden": hidden,
            "penultimate": penultimate,
            "features": feats,
        }


def flat_input(inp: ActInput, rows: int) -> ActInput:
    def f(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(rows, *x.shape[2:])

    return ActInput(f(inp.obs), f(inp.extra), f(inp.agent_ids), f(inp.avail), f(inp.state))


def run_gru(cell: nn.GRUCell, feats: torch.Tensor, h0: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """GRU over [L, M, F] with the hidden state zeroed where ``starts`` [L, M] is true."""
    keep = (~starts).unsqueeze(-1).to(feats.dtype)
    h, out = h0, []
    for t in range(feats.shape[0]):
        h = cell(feats[t], h * keep[t])
        out.append(h)
    return torch.stack(out)


class RecurrentCritic(nn.Module):
    """MAPPO's centralised critic: global state -> FC, (+ one-hot agent id) -> FC -> GRU -> V.

    The state is encoded once per env copy and shared by that copy's N agents."""

    def __init__(self, spec: EnvSpec, cfg):
        super().__init__()
        self.hidden_dim, self.n_agents = cfg.hidden_dim, spec.n_agents
        self.state_encoder = ObsEncoder(
            spec.state_shape,
            0,
            0,
            cfg.hidden_dim,
            cfg.downsample,
            cfg.critic_cnn_channels,
            cfg.cnn_kernel,
            cfg.critic_cnn_stride,
            cfg.orthogonal_init,
            layer_norm=cfg.layer_norm,
        )
        self.id_dim = spec.n_agents if cfg.critic_agent_id else 0
        self.fc = init_layer(nn.Linear(cfg.hidden_dim + self.id_dim, cfg.hidden_dim), orthogonal=cfg.orthogonal_init)
        # The second FC's LayerNorm follows the encoder's rule (vector states only).
        self.fc_norm = (
            nn.LayerNorm(cfg.hidden_dim) if cfg.layer_norm and not self.state_encoder.image else nn.Identity()
        )
        self.gru = init_gru(nn.GRUCell(cfg.hidden_dim, cfg.hidden_dim), cfg.orthogonal_init)
        self.out_norm = output_norm(cfg.hidden_dim, cfg.layer_norm)
        self.v = init_layer(nn.Linear(cfg.hidden_dim, 1), 1.0, cfg.orthogonal_init)

    def initial_hidden(self, rows: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.zeros(rows, self.hidden_dim, device=device)

    def preprocess(self, state: torch.Tensor) -> torch.Tensor:
        return self.state_encoder.preprocess(state)

    def _inputs(self, state_p: torch.Tensor) -> torch.Tensor:
        """state_p [K, *stored] -> per-agent inputs [K, N, F]."""
        s = self.state_encoder(state_p, None, None)
        s = s.unsqueeze(1).expand(-1, self.n_agents, -1)
        if self.id_dim:
            eye = torch.eye(self.n_agents, dtype=s.dtype, device=s.device).expand(s.shape[0], -1, -1)
            s = torch.cat([s, eye], -1)
        return self.fc_norm(F.relu(self.fc(s)))

    def step(self, state_p: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """state_p [B, *stored]; h [B, N, H] -> (values [B, N], new hidden [B, N, H])."""
        B = state_p.shape[0]
        x = self._inputs(state_p).reshape(B * self.n_agents, -1)
        h = self.gru(x, h.reshape(B * self.n_agents, -1))
        return self.v(self.out_norm(h)).view(B, self.n_agents), h.view(B, self.n_agents, -1)

    def sequence(self, state_p: torch.Tensor, h0: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """state_p [L, K, *stored] (K chunks of env copies); h0 [K, N, H]; starts [L, K] -> values [L, K, N]."""
        L, K = starts.shape
        x = self._inputs(state_p.reshape(L * K, *state_p.shape[2:])).view(L, K * self.n_agents, -1)
        s = starts.unsqueeze(-1).expand(L, K, self.n_agents).reshape(L, K * self.n_agents)
        hidden = run_gru(self.gru, x, h0.reshape(K * self.n_agents, -1), s)
        return self.v(self.out_norm(hidden)).view(L, K, self.n_agents)
