"""VL-PET: Vision-and-Language Parameter-Efficient Tuning via Granularity Control.

Zi-Yuan Hu, Yanyang Li, Michael R. Lyu, Liwei Wang. ICCV 2023, arXiv 2308.09804.
Official code: https://github.com/HenryHZY/VL-PET (`src/my_transformers/modeling_bart.py`, `modeling_t5.py`,
`src/trainer_base.py`, `scripts/image-text/*.sh`).

In every encoder layer, after self-attention and after the FFN, the frozen sublayer output H becomes
H' = H + W_up GELU(concat_i W_down^i H) (a multi-head down-projection adapter) and the layer adds H' ⊙ G (· s) to
its input X before the LayerNorm, where the granularity-controlled matrix G is
- large:   σ(W_g,up GELU(W_g,down X)), one value per token and dimension;
- middleX: σ(wᵀ(X + H') + b), one value per token;
- middleY: 1 + z with z ∈ R^d (init N(0, 0.02)), one value per dimension (the code has no sigmoid, unlike Fig. 3);
- small:   the token mean of σ(wᵀ[X; H'] + b), one value per sample.
The decoder keeps its self-attention and FFN; only the cross-attention value projection gets a parallel adapter
(V = W_v E + W_up GELU(W_down E)). Encoder LayerNorms and the visual projector train too.

Baselines of the paper's Table 2, as its scripts set them: full fine-tuning, VL-Adapter (a sequential adapter after
every sublayer of encoder and decoder, reduction 8, all LayerNorms trainable), LoRA (peft; q and v of every
attention, rank d/6 with alpha r/4 as rank 128 / alpha 32 on BART-base, plus all biases), BitFit (every bias) and
prompt tuning (40 prompt vectors through an MLP, before the text). `vl-adapter+g-large` is Table 9's transfer: the
VL-Adapter adapter made gated and lightweight (single-head down-projection, large gate, the decoder design above).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers.activations import ACT2FN

from .base import Method, option
from .registry import build_method, register

GRANULARITIES = ("large", "middlex", "middley", "small")
METHODS = ("full", "vl-adapter", "lora", "bitfit", "prompt") + tuple(f"vl-pet-{g}" for g in GRANULARITIES) + (
    "vl-adapter+g-large",)

@dataclass(frozen=True)
class VLPETConfig:
    """Sizes are reductions of d_model so one config fits BART-base (d = 768) and the tiny ci model alike."""
    granularity: str | None = "large"  # None: an ungated adapter
    adapter_reduction: int = 8         # r = d / 8: 96 on BART-base (official 96); T5-base uses 4 (192)
    heads: int = 4                     # down-projection heads (official 4); 1 for Table 9's VL-Adapter + G
    gate_reduction: int = 8            # r_g of the large gate: 96 on BART-base; T5 4 (192)
    scale: float = 1.0                 # s: 1 for BART, 0.3 for T5
    decoder_reduction: int = 8         # the cross-attention value adapter: 96 on BART-base (both backbones)
    lightweight_decoder: bool = True   # only the value adapter in the decoder (the paper's design)
    zero_init_up: bool = False         # zero up-projections (the official T5 scripts; BART keeps normal init)


T5_PRESET = VLPETConfig(adapter_reduction=4, gate_reduction=4, scale=0.3, zero_init_up=True)


@dataclass(frozen=True)
class BaselineConfig:
    adapter_reduction: int = 8         # VL-Adapter: 768 -> 96
    lora_rank_reduction: int = 6       # LoRA rank d / 6: 128 on BART-base
    prompt_len: int = 40               # prompt tuning: 40 vectors ...
    prompt_mid_ratio: float = 800 / 768  # ... through a d -> 800 -> d MLP on BART-base


def _init(linear: nn.Linear, zero: bool = False) -> nn.Linear:
    """transformers' init for new layers (normal 0.02, zero bias), or all zeros."""
    nn.init.normal_(linear.weight, std=0.02) if not zero else nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class MultiHeadAdapter(nn.Module):
    """ΔH = W_up GELU(concat_i W_down^i H): `heads` down-projections d -> r/heads of the whole H, one up r -> d."""

    def __init__(self, d: int, r: int, heads: int = 1, zero_up: bool = False):
        super().__init__()
        if r % heads:
            raise ValueError(f"adapter size {r} is not divisible by {heads} heads")
        self.down = nn.ModuleList(_init(nn.Linear(d, r // heads)) for _ in range(heads))
        self.act = ACT2FN["gelu_new"]
        self.up = _init(nn.Linear(r, d), zero_up)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(torch.cat([down(h) for down in self.down], -1)))


class Gate(nn.Module):
    """The granularity-controlled matrix G(X, H'); its shape says the granularity (see the module docstring)."""

    def __init__(self, granularity: str, d: int, r_gate: int, zero_up: bool = False):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; known: {', '.join(GRANULARITIES)}")
        self.granularity = granularity
        if granularity == "large":
            self.down = _init(nn.Linear(d, r_gate))
            self.act = ACT2FN["gelu_new"]
            self.up = _init(nn.Linear(r_gate, d), zero_up)
        elif granularity == "middlex":
            self.w = _init(nn.Linear(d, 1))
        elif granularity == "middley":
            self.z = nn.Parameter(torch.randn(d) * 0.02)
        else:
            self.w = _init(nn.Linear(2 * d, 1))

    def forward(self, x: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        g = self.granularity
        if g == "large":
            return torch.sigmoid(self.up(self.act(self.down(x))))          # B x N x d
        if g == "middlex":
            return torch.sigmoid(self.w(x + h2))                           # B x N x 1
        if g == "middley":
            return 1 + self.z                                              # d
        return torch.sigmoid(self.w(torch.cat([x, h2], -1))).mean(1, keepdim=True)  # B x 1 x 1


class PETModule(nn.Module):
    """H -> H' ⊙ G · s with H' = H + adapter(H); without a gate, the plain sequential adapter H -> H'."""

    def __init__(self, d: int, r: int, heads: int, gate: Gate | None, scale: float = 1.0, zero_up: bool = False):
        super().__init__()
        self.adapter = MultiHeadAdapter(d, r, heads, zero_up)
        self.gate = gate
        self.scale = scale

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        h2 = h + self.adapter(h)
        return h2 if self.gate is None else h2 * self.gate(x, h2) * self.scale


class PETAttention(nn.Module):
    """An attention module whose output passes through a PET module; X is the attention's own input."""

    def __init__(self, attn: nn.Module, pet: PETModule):
        super().__init__()
        self.inner, self.pet = attn, pet

    def forward(self, hidden_states, *args, **kwargs):
        out = self.inner(hidden_states, *args, **kwargs)
        return (self.pet(hidden_states, out[0]),) + tuple(out[1:])


class PETFeedForward(nn.Module):
    """A sublayer (T5's DenseReluDense, a ViT block's attention or MLP) whose output passes through a PET module."""

    def __init__(self, ffn: nn.Module, pet: PETModule):
        super().__init__()
        self.inner, self.pet = ffn, pet

    def forward(self, x, *args, **kwargs):
        return self.pet(x, self.inner(x, *args, **kwargs))


class _Tap(nn.Module):
    """BART's fc1 that remembers its input (the FFN's X) for the PET module on fc2."""

    def __init__(self, fc1: nn.Linear):
        super().__init__()
        self.inner, self.x = fc1, None

    def forward(self, x):
        self.x = x
        return self.inner(x)


class PETFc2(nn.Module):
    def __init__(self, fc2: nn.Linear, tap: _Tap, pet: PETModule):
        super().__init__()
        self.inner, self.pet = fc2, pet
        self._tap = [tap]  # a list, so the tap is not registered twice as a submodule

    def forward(self, h):
        x, self._tap[0].x = self._tap[0].x, None
        return self.pet(x, self.inner(h))


class ValueParallelAdapter(nn.Module):
    """V = W_v E + W_up GELU(W_down E): the frozen value projection plus a parallel bottleneck."""

    def __init__(self, v: nn.Linear, r: int, zero_up: bool = False):
        super().__init__()
        d = v.in_features
        self.inner = v
        self.down = _init(nn.Linear(d, r))
        self.act = ACT2FN["gelu"]
        self.up = _init(nn.Linear(r, v.out_features), zero_up)

    def forward(self, e):
        return self.inner(e) + self.up(self.act(self.down(e)))


def is_t5(lm) -> bool:
    return lm.config.model_type in ("t5", "mt5")


def _sublayers(lm):
    """(encoder layers, decoder layers) of a BART or T5 model."""
    if is_t5(lm):
        return lm.encoder.block, lm.decoder.block
    return lm.model.encoder.layers, lm.model.decoder.layers


def _wrap_ffn(layer, lm, make_pet) -> None:
    """Put a PET module on the FFN output of a BART or T5 layer."""
    if is_t5(lm):
        ff = layer.layer[-1]
        ff.DenseReluDense = PETFeedForward(ff.DenseReluDense, make_pet())
    else:
        tap = _Tap(layer.fc1)
        layer.fc1 = tap
        layer.fc2 = PETFc2(layer.fc2, tap, make_pet())


def _wrap_attn(owner, attr: str, make_pet) -> None:
    setattr(owner, attr, PETAttention(getattr(owner, attr), make_pet()))


def add_vlpet(lm, cfg: VLPETConfig) -> None:
    """Insert VL-PET modules into a BART or T5 `lm` in place (encoder: after self-attention and FFN; decoder: the
    cross-attention value adapter, or VL-Adapter's three adapters when `lightweight_decoder` is False)."""
    d = lm.config.d_model
    rd = d // cfg.decoder_reduction

    def make_pet(gated=True):
        return _make_pet(cfg, d, gated)

    enc, dec = _sublayers(lm)
    for layer in enc:
        if is_t5(lm):
            _wrap_attn(layer.layer[0], "SelfAttention", make_pet)
        else:
            _wrap_attn(layer, "self_attn", make_pet)
        _wrap_ffn(layer, lm, make_pet)
    for layer in dec:
        if cfg.lightweight_decoder:
            attn = layer.layer[1].EncDecAttention if is_t5(lm) else layer.encoder_attn
            name = "v" if is_t5(lm) else "v_proj"
            setattr(attn, name, ValueParallelAdapter(getattr(attn, name), rd, cfg.zero_init_up))
        else:  # VL-Adapter's decoder: after self-attention, cross-attention and the FFN, no gate
            plain = lambda: make_pet(gated=False)  # noqa: E731
            if is_t5(lm):
                _wrap_attn(layer.layer[0], "SelfAttention", plain)
                _wrap_attn(layer.layer[1], "EncDecAttention", plain)
            else:
                _wrap_attn(layer, "self_attn", plain)
                _wrap_attn(layer, "encoder_attn", plain)
            _wrap_ffn(layer, lm, plain)


def _make_pet(cfg: VLPETConfig, d: int, gated: bool = True) -> PETModule:
    for field_name in ("adapter_reduction", "gate_reduction"):
        if not 1 <= getattr(cfg, field_name) <= d:
            raise ValueError(f"{field_name} must be between 1 and the model width {d} (the bottleneck is "
                             f"{d} // {field_name}), got {getattr(cfg, field_name)}")
    gate = Gate(cfg.granularity, d, d // cfg.gate_reduction, cfg.zero_init_up) if (gated and cfg.granularity) else None
    return PETModule(d, d // cfg.adapter_reduction, cfg.heads, gate, cfg.scale if gate is not None else 1.0,
                     cfg.zero_init_up)


def add_to_vit(vit: nn.Module, cfg: VLPETConfig = VLPETConfig()) -> nn.Module:
    """VL-PET's encoder design on a timm ViT image classifier, in place (the arena's image tower): a PET module
    after the self-attention and after the MLP of every block; those modules, every LayerNorm (VL-PET trains the
    encoder's) and the classification head train, the rest is frozen."""
    vit.requires_grad_(False)
    d = vit.embed_dim
    for blk in vit.blocks:
        blk.attn = PETFeedForward(blk.attn, _make_pet(cfg, d))
        blk.mlp = PETFeedForward(blk.mlp, _make_pet(cfg, d))
    for m in vit.modules():
        if isinstance(m, nn.LayerNorm):
            m.requires_grad_(True)
    vit.get_classifier().requires_grad_(True)
    return vit


def _is_layer_norm(name: str) -> bool:
    return "layer_norm" in name or "layernorm" in name


def trainable_names(method: str, model) -> list[str]:
    """The parameter names `method` trains on a `VLModel` (after `apply_method`): the official scripts' sets."""
    names = [n for n, _ in model.named_parameters()]
    added = ("adapter.", "gate.", ".pet.", "lora_", ".down.", ".up.")
    visual = [n for n in names if n.startswith("visual.")]
    if method == "full":
        return names
    if method.startswith("vl-pet") or method == "vl-adapter+g-large":
        return visual + [n for n in names if n.startswith("lm.") and (
            any(a in n for a in added) or ("encoder." in n and _is_layer_norm(n)))]
    if method == "vl-adapter":
        return visual + [n for n in names if n.startswith("lm.") and (any(a in n for a in added) or _is_layer_norm(n))]
    if method == "lora":
        return visual + [n for n in names if n.startswith("lm.") and ("lora_" in n or n.endswith("bias"))]
    if method == "bitfit":
        return visual + [n for n in names if n.startswith("lm.") and n.endswith("bias")]
    if method == "prompt":
        return visual + [n for n in names if n.startswith("prompt")]
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


class PromptMLP(nn.Module):
    """Prompt tuning's prefix: 40 embeddings through Linear -> Tanh -> Linear (VL-Adapter's PromptController)."""

    def __init__(self, d: int, length: int, mid: int):
        super().__init__()
        self.embed = nn.Embedding(length, d)
        self.mlp = nn.Sequential(nn.Linear(d, mid), nn.Tanh(), nn.Linear(mid, d))

    def forward(self) -> torch.Tensor:
        return self.mlp(self.embed.weight)


def apply_vl(model, method: str, cfg: VLPETConfig | None = None, base: BaselineConfig = BaselineConfig()):
    """Turn a `VLModel` into `method` (a key of METHODS) in place: insert its modules, freeze everything else."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    lm = model.lm
    d = lm.config.d_model
    t5 = is_t5(lm)
    cfg = cfg or (T5_PRESET if t5 else VLPETConfig())
    if method.startswith("vl-pet-"):
        add_vlpet(lm, replace(cfg, granularity=method.removeprefix("vl-pet-")))
    elif method == "vl-adapter+g-large":
        add_vlpet(lm, replace(cfg, granularity="large", heads=1, adapter_reduction=base.adapter_reduction))
    elif method == "vl-adapter":
        add_vlpet(lm, replace(cfg, granularity=None, heads=1, adapter_reduction=base.adapter_reduction,
                              lightweight_decoder=False, zero_init_up=False))
    elif method == "lora":
        from peft import LoraConfig, inject_adapter_in_model
        r = d // base.lora_rank_reduction
        targets = ["q", "v"] if t5 else ["q_proj", "v_proj"]
        inject_adapter_in_model(LoraConfig(r=r, lora_alpha=r / 4, lora_dropout=0.1, target_modules=targets), lm)
    elif method == "prompt":
        model.prompt_mlp = PromptMLP(d, base.prompt_len, round(d * base.prompt_mid_ratio))
    keep = set(trainable_names(method, model))
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    return model


# the chapter's row labels (the paper's Table 2 names) -> registry names
REGISTRY_NAMES = {"full": "full-finetune", "prompt": "prompt-tuning", "vl-adapter+g-large": "vl-adapter-g-large"}


def apply_method(model, method: str, cfg: VLPETConfig | None = None, base: BaselineConfig = BaselineConfig()):
    """The chapter's row `method` (a key of METHODS) on a `VLModel`, built through the registry; returns the model."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    name = REGISTRY_NAMES.get(method, method)
    options = {"lora": {"rank_reduction": base.lora_rank_reduction}, "full-finetune": {}}.get(
        name, {"pet": cfg, "baseline": base})
    return build_method(name, **options).apply(model)


@dataclass(frozen=True)
class VLMethodConfig:
    pet: VLPETConfig | None = option(None, "sizes of the PET modules (None: the paper's preset for the backbone, "
                                           "BART's or T5_PRESET)")
    baseline: BaselineConfig = option(BaselineConfig(), "sizes of Table 2's baselines (VL-Adapter, prompt tuning)")


class VLMethod(Method):
    """VL-PET: granularity-controlled gates on multi-head adapters in the encoder, a lightweight decoder adapter."""
    family, backbones, chapter, config_class = "peft", ("vl",), "VL-PET", VLMethodConfig
    key = ""   # the METHODS key apply_vl builds

    def _apply(self, backbone, kind, data):
        if kind == "image":   # VL-PET's encoder design on a ViT (the arena's image tower)
            return add_to_vit(backbone, replace(self.cfg.pet or VLPETConfig(), granularity=self.key.removeprefix("vl-pet-")))
        return apply_vl(backbone, self.key, self.cfg.pet, self.cfg.baseline)


for _g in GRANULARITIES:
    register(f"vl-pet-{_g}", f"VL-PET ({_g})")(type(f"VLPET_{_g}", (VLMethod,), {
        "key": f"vl-pet-{_g}", "backbones": ("vl", "image"),
        "__doc__": f"VL-PET with the {_g} gate granularity (Table 2); on the image tower, the encoder design alone."}))


@register("vl-adapter", "VL-Adapter")
class VLAdapter(VLMethod):
    """VL-Adapter (Sung et al., CVPR 2022): sequential adapters after every sublayer, all LayerNorms train."""
    key = "vl-adapter"


@register("vl-adapter-g-large", "VL-Adapter + large gate")
class VLAdapterGated(VLMethod):
    """Table 9: VL-Adapter's adapter with VL-PET's large gate and lightweight decoder."""
    key = "vl-adapter+g-large"


@register("bitfit", "BitFit")
class BitFit(VLMethod):
    """BitFit (Ben Zaken et al., ACL 2022): only the biases of the language model train."""
    key = "bitfit"


@register("prompt-tuning", "prompt tuning")
class PromptTuning(VLMethod):
    """Prompt tuning: 40 prompt vectors through an MLP before the text (VL-Adapter's PromptController)."""
    family, key = "prompts", "prompt"
