"""The kernel interface: attention as a kernel smoother.

    out_i = Σ_j κ(q_i, k_j) v_j / Σ_j κ(q_i, k_j)            (Wright & Gonzalez 2021, eq. 3)

A kernel is a subclass of ``Kernel`` registered by name in ``KERNELS`` with a ``Config`` dataclass. It
declares what the study needs to know about it (feature dimension, symmetry, positive definiteness, sign) and
provides up to four attention paths over the same maths:

- ``exact``: materialise κ (B, H, Tq, Tk), zero masked keys, normalise. The reference every other path is
  tested against. Strictly positive kernels of exponential type define ``log_score`` and the exact path
  subtracts the row maximum before exponentiating (exact: the normaliser cancels any per-row factor); the
  others define ``score``.
- ``fast``: the kernel's best path that never materialises a (B, H, Tq, Tk, D) tensor. By default ``tiled``;
  kernels with a better route (SDPA for edp and rbf, φ for finite-feature kernels) override it.
- ``tiled``: the tiled path of ``attention/chunked.py`` over the same ``log_score``/``score`` (memory O(tile²),
  gradients by recomputation), for every kernel.
- ``linear``: for finite-feature kernels, O(T) attention through the explicit feature map φ.
- ``flex``: FlexAttention with ``score_mod = log κ`` for kernels that define ``flex_score_mod``. Forward runs
  on CPU (eager, for testing); training needs CUDA. Opt-in until a GPU run has verified it.

Masks follow PyTorch: ``key_padding_mask`` is (B, Tk) bool with True = padding (gets zero weight); ``causal``
aligns the last query with the last key (offset Tk - Tq), which is also what incremental decoding needs.
Rows whose keys are all masked return zeros, never NaN. Half-precision inputs are computed in float32 and the
result is cast back, because exp, powers and the normaliser's sum are where bf16 loses the answer. Division
follows one rule on every path (``attention/normaliser.py``): positive kernels are never floored; signed kernels
with the plain sum keep every output within max‖v‖/eps of the visible values.

Positions: every path receives the absolute positions of its queries and keys (``Positions``: q_offset +
arange(Tq), k_offset + arange(Tk); by default queries are aligned like the causal mask). Position-aware kernels
(``position_aware = True``, e.g. cosFormer's re-weighting) take them in ``score``/``feature_map``; cached
decoding passes the offset of the new tokens, so a step computes what the full pass computes.

Trainable kernels: a kernel may own ``nn.Parameter``s (Hedgehog's per-head maps). The exact path trains them by
autograd; the tiled path (through ``AutogradScore``) and the feature-map path differentiate the recomputed score
or φ with respect to them too. A path that cannot (flex; a hand-written tile score) refuses with one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from kernel_attention.attention.normaliser import Normaliser, value_norms
from kernel_attention.registry import ConfigError, Registry

if TYPE_CHECKING:
    from kernel_attention.attention.tile_scores import TileScore

INF = math.inf
PATHS = ("auto", "exact", "fast", "tiled", "linear", "flex")
NORMALIZATIONS = ("sum", "abs")
# A flex score_mod: (score, b, h, q_idx, kv_idx) -> log κ, where score = q·k * flex_scale().
ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass
class KernelConfig:
    """Options every kernel has. Subclasses add their own (scales, degrees, ...) and extend ``validate``."""

    # Which attention path to run: auto (exact on small Tq·Tk, else the kernel's default_path), exact, fast,
    # tiled, linear or flex.
    path: str = "auto"
    # Display name in logs and reports; empty = the registered name. Presets set it (quadratic = p=2).
    label: str = ""

    def validate(self) -> None:
        if self.path not in PATHS:
            raise ConfigError(f"kernel.path={self.path!r} is not allowed; choose one of: {', '.join(PATHS)}")


@dataclass
class SignedKernelConfig(KernelConfig):
    """Options of kernels that can be negative, where Σ_j κ_ij may be ~0."""

    # sum: divide by Σ_j κ_ij (the formula as written; can cross 0); abs: divide by Σ_j |κ_ij| (never ~0
    # unless every weight is, so the output stays a bounded signed average of v).
    normalization: str = "abs"
    # sum only: where Σκ has cancelled so far that an output would exceed (largest visible ‖v‖)/eps, the
    # denominator is replaced to put it at exactly that bound (sign kept). Scale-free: it never acts on small but
    # legitimate kernels (attention/normaliser.py).
    eps: float = 1e-6

    def validate(self) -> None:
        super().validate()
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"kernel.normalization={self.normalization!r} is not allowed; choose one of: "
                f"{', '.join(NORMALIZATIONS)}"
            )
        if not 0 < self.eps < 1:
            raise ConfigError(f"kernel.eps={self.eps} must be in (0, 1) (a relative floor, e.g. 1e-6)")


@dataclass(frozen=True)
class KernelProperties:
    """What the study records about a kernel at a given head dimension.

    ``symmetric`` and ``positive_definite`` describe κ as a function on R^d × R^d (q and k);
    ``positive_definite`` is the kernel-methods sense (every Gram matrix is positive semi-definite, i.e. κ is a
    Mercer kernel). Over tokens every kernel in a Transformer is asymmetric and generally indefinite because
    W_Q ≠ W_K (Wright & Gonzalez 2021, §4); these flags tell kernels apart before that projection."""

    feature_dim: float  # an int, or math.inf for infinite-dimensional feature spaces
    symmetric: bool
    positive_definite: bool
    can_be_negative: bool

    def to_json(self) -> dict[str, Any]:
        fd = self.feature_dim
        return {
            "feature_dim": "inf" if math.isinf(fd) else int(fd),
            "symmetric": self.symmetric,
            "positive_definite": self.positive_definite,
            "can_be_negative": self.can_be_negative,
        }


@dataclass(frozen=True)
class Positions:
    """Absolute positions of a call's tokens: queries at q_offset + arange(Tq), keys at k_offset + arange(Tk)."""

    q_offset: int = 0
    k_offset: int = 0

    def q(self, n: int, device: torch.device | None = None) -> Tensor:
        return torch.arange(n, device=device) + self.q_offset  # (Tq,)

    def k(self, n: int, device: torch.device | None = None) -> Tensor:
        return torch.arange(n, device=device) + self.k_offset  # (Tk,)


def keep_mask(
    Tq: int, Tk: int, *, causal: bool, key_padding_mask: Tensor | None, device: torch.device
) -> Tensor | None:
    """Boolean (B|1, 1, Tq, Tk) mask, True where query i may attend key j; None when nothing is masked."""
    mask = None
    if causal:
        # Bottom-right aligned: query i (of the last Tq positions) sees keys j <= i + (Tk - Tq).
        qpos = torch.arange(Tq, device=device)[:, None] + (Tk - Tq)  # (Tq, 1)
        kpos = torch.arange(Tk, device=device)[None, :]  # (1, Tk)
        mask = (kpos <= qpos)[None, None]  # (1, 1, Tq, Tk)
    if key_padding_mask is not None:
        kp = ~key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, Tk)
        mask = kp if mask is None else mask & kp  # (B, 1, Tq, Tk)
    return mask


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision inputs (exp/powers/sums need the range and mantissa), else x's dtype."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


class Kernel(nn.Module):
    """Base class of every attention kernel. See the module docstring for the contract."""

    name: ClassVar[str]
    Config: ClassVar[type[KernelConfig]] = KernelConfig
    symmetric: ClassVar[bool]
    positive_definite: ClassVar[bool]
    can_be_negative: ClassVar[bool] = False
    # True where κ depends on the tokens' positions as well as on q and k: ``score``/``log_score`` then take the
    # query and key positions (Tq,), (Tk,) and ``feature_map`` the (T,) positions of its tokens as well.
    position_aware: ClassVar[bool] = False
    # The path that ``path=auto`` runs, except on problems with Tq·Tk <= auto_exact_below: there κ is cheap to
    # hold and the one-shot reference is the quickest path on CPU (short training sentences, cached decoding);
    # the tiled and linear paths win from T ≈ 512 resp. 128 on and bound memory beyond that.
    default_path: ClassVar[str] = "fast"
    auto_exact_below: ClassVar[int] = 256 * 256
    # Tile sizes of the generic fast path (queries × keys): memory O(B·H·tile²), few enough Python steps.
    block_q: ClassVar[int] = 256
    block_k: ClassVar[int] = 256
    # True where the fast path is a fused kernel that keeps half precision accurate itself (SDPA accumulates
    # in float32): on CUDA it then gets bf16/fp16 inputs as they are, because upcasting would rule out the
    # flash kernels (half precision only) and double the memory traffic. CPU keeps the float32 rule.
    half_precision_fast: ClassVar[bool] = False
    # Buffers holding a random draw (e.g. FAVOR+'s ω): checkpoint averaging must take them from the newest
    # checkpoint, never average draws.
    draw_buffers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: KernelConfig, head_dim: int, heads: int = 1) -> None:
        super().__init__()
        if head_dim < 1 or heads < 1:
            raise ConfigError(f"head_dim and heads must be >= 1, got head_dim={head_dim}, heads={heads}")
        self.cfg = cfg
        self.head_dim, self.heads = head_dim, heads

    # ---- what the study records -------------------------------------------------------------------------
    def feature_dim(self) -> float:
        """Dimension of the kernel's feature space at ``self.head_dim`` (an int, or ``math.inf``)."""
        raise NotImplementedError

    def properties(self) -> KernelProperties:
        return KernelProperties(
            feature_dim=self.feature_dim(),
            symmetric=self.symmetric,
            positive_definite=self.positive_definite,
            can_be_negative=self.can_be_negative,
        )

    # ---- the maths --------------------------------------------------------------------------------------
    def score(self, q: Tensor, k: Tensor) -> Tensor:
        """κ(q_i, k_j) for all pairs: (B, H, Tq, D), (B, H, Tk, D) → (B, H, Tq, Tk)."""
        return self.log_score(q, k).exp()

    def log_score(self, q: Tensor, k: Tensor) -> Tensor:
        """log κ(q_i, k_j) for strictly positive kernels: (B, H, Tq, D), (B, H, Tk, D) → (B, H, Tq, Tk)."""
        raise NotImplementedError(f"kernel {self.name!r} is not strictly positive: it has no log_score")

    @property
    def has_log_score(self) -> bool:
        return type(self).log_score is not Kernel.log_score

    def feature_map(self, x: Tensor) -> Tensor:
        """φ(x) with φ(q)·φ(k) = κ(q, k): (B, H, T, D) → (B, H, T, F). Finite-feature kernels only."""
        raise NotImplementedError(f"kernel {self.name!r} has no finite feature map")

    def key_feature_map(self, x: Tensor, *pos: Tensor) -> Tensor:
        """φ of keys; the same map as queries unless a kernel has separate maps (then κ is asymmetric)."""
        return self.feature_map(x, *pos)

    @property
    def has_feature_map(self) -> bool:
        return type(self).feature_map is not Kernel.feature_map

    def flex_score_mod(self, q: Tensor, k: Tensor) -> ScoreMod | None:
        """A FlexAttention score_mod returning log κ from score = q·k·flex_scale() (and per-token scalars of
        q and k it may capture), or None when κ is not a function flex can express."""
        return None

    def flex_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    def trainable_parameters(self) -> list[Tensor]:
        """The kernel's own parameters that take gradients (Hedgehog's maps; none for fixed kernels)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ---- attention --------------------------------------------------------------------------------------
    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        causal: bool = False,
        key_padding_mask: Tensor | None = None,
        path: str | None = None,
        q_offset: int | None = None,
        k_offset: int = 0,
    ) -> Tensor:
        """Kernel attention: q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) → (B, H, Tq, Dv).

        Keys sit at positions k_offset + arange(Tk), queries at q_offset + arange(Tq); q_offset defaults to the
        causal alignment (Tk − Tq + k_offset when causal, else k_offset). Only position-aware kernels read them;
        cross-attention during cached decoding passes the decoder position as q_offset."""
        Tq, Tk = q.shape[-2], k.shape[-2]
        path = self.resolve_path(Tq, Tk, path)
        if path not in PATHS:
            raise ConfigError(f"unknown attention path {path!r}; choose one of: {', '.join(PATHS)}")
        if path == "linear" and not self.has_feature_map:
            raise ConfigError(
                f"kernel {self.name!r} has no finite feature map, so no linear path; use exact or fast"
            )
        if q_offset is None:
            q_offset = k_offset + (Tk - Tq if causal else 0)
        pos = Positions(q_offset, k_offset)
        native = q.is_cuda and path == "fast" and self.half_precision_fast
        dtype = q.dtype if native else compute_dtype(q)
        q32, k32, v32 = q.to(dtype), k.to(dtype), v.to(dtype)  # no-ops unless half precision
        run = getattr(self, path)
        out = run(q32, k32, v32, causal=causal, key_padding_mask=key_padding_mask, pos=pos)  # (B, H, Tq, Dv)
        return out.to(v.dtype)

    def resolve_path(self, Tq: int, Tk: int, path: str | None = None) -> str:
        """The path a call runs: ``path`` (or the configured one), with auto resolved for this problem size."""
        path = path or self.cfg.path
        if path == "auto":
            return "exact" if Tq * Tk <= self.auto_exact_below else self.default_path
        return path

    def pair_scores(self, q: Tensor, k: Tensor, pos: Positions, *, log: bool) -> Tensor:
        """log κ (``log``) or κ for every (query, key) pair of a call, with positions where κ reads them."""
        fn = self.log_score if log else self.score
        if self.position_aware:
            return fn(q, k, pos.q(q.shape[-2], q.device), pos.k(k.shape[-2], k.device))  # (B, H, Tq, Tk)
        return fn(q, k)  # (B, H, Tq, Tk)

    def exact(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        """Reference path: materialise κ, zero masked keys, normalise."""
        Tq, Tk = q.shape[-2], k.shape[-2]
        mask = keep_mask(Tq, Tk, causal=causal, key_padding_mask=key_padding_mask, device=q.device)
        if self.has_log_score:
            logits = self.pair_scores(q, k, pos, log=True)  # (B, H, Tq, Tk)
            if mask is not None:
                logits = logits.masked_fill(~mask, -math.inf)
            # Subtracting the row max over the VISIBLE keys is exact (the normaliser cancels it) and keeps exp()
            # finite; masked keys cannot move it, so no hidden key can push the visible weights to 0.
            row_max = logits.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(logits.dtype).min)  # (B,H,Tq,1)
            w = (logits - row_max.detach()).exp()  # (B, H, Tq, Tk)
        else:
            w = self.pair_scores(q, k, pos, log=False)  # (B, H, Tq, Tk)
            if mask is not None:
                w = w.masked_fill(~mask, 0.0)
        return self.smooth(w, v, mask)  # (B, H, Tq, Dv)

    def smooth(self, w: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalised kernel smoother from masked weights w (B, H, Tq, Tk), v (B, H, Tk, Dv) and the visibility
        mask (B|1, 1, Tq, Tk) or None, by the rule every path shares (attention/normaliser.py)."""
        norm = self.normaliser()
        num = w @ v  # (B, H, Tq, Dv)
        den = (w.abs() if norm.abs_terms else w).sum(dim=-1, keepdim=True)  # (B, H, Tq, 1)
        floor = None
        if norm.guarded:
            vn = value_norms(v).transpose(-2, -1)  # (B, H, 1, Tk)
            vmax = (vn if mask is None else torch.where(mask, vn, 0.0)).amax(dim=-1, keepdim=True)  # (B,H,Tq,1)
            floor = norm.floor(num, vmax)
        return num / norm.safe(den, floor)  # (B, H, Tq, Dv)

    def tile_score(self) -> TileScore:
        """The score the tiled path evaluates per tile: ``log_score`` (or ``score``) with gradients by
        autograd (also for the kernel's own parameters). Kernels of a known form (f(q·k), f(‖q−k‖²), linear in
        ‖q−k‖₁) return a ``TileScore`` with a hand-written backward (attention/tile_scores.py), which is what
        makes the tiled path fast on CPU."""
        from kernel_attention.attention.tile_scores import AutogradScore

        fn = self.log_score if self.has_log_score else self.score
        return AutogradScore(fn, params=self.trainable_parameters(), position_aware=self.position_aware)

    def fast(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        """The kernel's best memory-bounded path: ``tiled`` unless a kernel has a better route."""
        return self.tiled(q, k, v, causal=causal, key_padding_mask=key_padding_mask, pos=pos)  # (B, H, Tq, Dv)

    def tiled(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        """Tiled path over the same score function as ``exact`` (never holds more than a tile of κ)."""
        from kernel_attention.attention.chunked import chunked_kernel_attention
        from kernel_attention.attention.tile_scores import AutogradScore

        score = self.tile_score()
        if self.trainable_parameters() and not isinstance(score, AutogradScore):
            raise ConfigError(f"kernel {self.name!r} has trainable parameters that its hand-written tile score "
                              "does not differentiate; use path=exact")
        return chunked_kernel_attention(
            q, k, v, score,
            log_space=self.has_log_score,
            normaliser=self.normaliser(),
            causal=causal,
            key_padding_mask=key_padding_mask,
            block_q=self.block_q,
            block_k=self.block_k,
            q_pos=pos.q(q.shape[-2], q.device) if self.position_aware else None,
            k_pos=pos.k(k.shape[-2], k.device) if self.position_aware else None,
        )  # (B, H, Tq, Dv)

    def linear(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        """O(T) attention through φ; only the 'sum' normaliser factorises through features. φ is passed as a map,
        applied a chunk of tokens at a time, so no (B, H, T, F) feature tensor is kept for backward."""
        from kernel_attention.attention.linear_attention import linear_attention

        self._check_linear()
        return linear_attention(
            q, k, v, self.feature_map, self.key_feature_map,
            causal=causal, key_padding_mask=key_padding_mask, normaliser=self.normaliser(),
            params=self.trainable_parameters(),
            q_pos=pos.q(q.shape[-2], q.device) if self.position_aware else None,
            k_pos=pos.k(k.shape[-2], k.device) if self.position_aware else None,
        )  # (B, H, Tq, Dv)

    def _check_linear(self) -> None:
        if self.normalization == "abs" and self.can_be_negative:
            raise ConfigError(
                f"kernel {self.name!r}: normalization=abs (Σ|κ|) does not factorise through φ; "
                "use normalization=sum with path=linear, or path=exact/fast"
            )

    def flex(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, key_padding_mask: Tensor | None, pos: Positions
    ) -> Tensor:
        from kernel_attention.attention.flex import flex_kernel_attention

        score_mod = None if self.position_aware else self.flex_score_mod(q, k)
        if score_mod is None:
            raise ConfigError(f"kernel {self.name!r} cannot be written as a flex score_mod; use exact or fast")
        if self.trainable_parameters():
            raise ConfigError(f"kernel {self.name!r} has trainable parameters, which path=flex does not train; "
                              "use path=exact or linear")
        return flex_kernel_attention(
            q, k, v, score_mod, scale=self.flex_scale(), causal=causal, key_padding_mask=key_padding_mask
        )  # (B, H, Tq, Dv)

    # ---- normalisation ----------------------------------------------------------------------------------
    @property
    def normalization(self) -> str:
        """'sum' (Σ κ) or 'abs' (Σ |κ|); signed kernels make it a config option."""
        return getattr(self.cfg, "normalization", "sum")

    @property
    def eps(self) -> float:
        return float(getattr(self.cfg, "eps", 1e-6))

    def normaliser(self) -> Normaliser:
        """The division rule of every path (attention/normaliser.py): only signed kernels normalised by the plain
        sum need a guard; Σ|κ| (abs) is 0 only when every weight is, like the sum of a positive kernel."""
        signed = self.can_be_negative
        return Normaliser(abs_terms=signed and self.normalization == "abs",
                          guarded=signed and self.normalization == "sum", eps=self.eps)


KERNELS: Registry[Kernel] = Registry("kernel")


def build_kernel(
    name: str, head_dim: int, cfg: KernelConfig | Mapping[str, Any] | None = None, *, heads: int = 1
) -> Kernel:
    """Construct kernel ``name`` for ``heads`` heads of size ``head_dim`` from its typed config or plain params
    (validated: a bad name or value raises a one-line ``ConfigError`` that lists what is allowed). Only kernels
    with per-head parameters (Hedgehog) depend on ``heads``; the others serve any number of heads."""
    cls = KERNELS.get(name)
    if isinstance(cfg, KernelConfig):
        if not isinstance(cfg, cls.Config):
            raise ConfigError(f"kernel {name!r} takes {cls.Config.__name__}, got {type(cfg).__name__}")
        cfg.validate()
    else:
        cfg = KERNELS.make_config(name, cfg)
    return cls(cfg, head_dim, heads)


def kernels_of(model: nn.Module) -> list[tuple[str, Kernel]]:
    """The kernel modules inside ``model`` with their qualified names (one per attention layer)."""
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, Kernel)]


def kernel_properties(model: nn.Module) -> KernelProperties:
    """The properties of the kernel ``model`` attends with, read off its own kernel modules: building another
    kernel would draw from the global RNG (random features) and change what a resumed run computes."""
    found = kernels_of(model)
    if not found:
        raise ValueError("the model has no kernel attention")
    return found[0][1].properties()


def draw_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the random draws of ``model``'s kernels (``Kernel.draw_buffers``): checkpoint averaging
    takes these from the newest checkpoint, because an average of two draws is no draw at all."""
    return {f"{name}.{buf}" if name else buf for name, mod in kernels_of(model) for buf in mod.draw_buffers}
