"""PE-CLIP's adapters (Saadi et al., arXiv 2503.16945; official code SAADI-Ibtissam/PE-CLIP, `models/clip1/model1.py`)
on open_clip's CLIP, for video: a clip of T frames goes through the image tower as T images.

In every transformer block of both towers, each adapter transforms a sub-layer's output before the block's residual
add, and has its own internal residual:
- **Shared Adapter (ShA)**, after self-attention in both towers: h + Linear(d/8 -> d)(GELU(Linear(d -> d/8)(h))),
  PyTorch's default initialisation (so it does not start as the identity). "Shared" names the design used in both
  towers; the official code gives each block its own weights.
- **Temporal Dynamic Adapter (TDA)**, after the MLP of the image tower: LayerNorm, a per-token scale
  s = ReLU(Linear(d -> 1)), Linear(d -> d/8), a GRU along the T frames, GELU, Linear(d/8 -> d) initialised to zero,
  times s, plus the residual. The text tower gets a plain adapter at that slot.

The GRU runs along the frames of each video separately, for every token position. The official code runs it over
the whole batch of frames in one sequence, so the state of one video's last frame flows into the next video's first
frame and a prediction depends on what else is in the batch; `TemporalAdapter(leak_across_videos=True)` reproduces
that behaviour for the chapter's comparison.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

REDUCTION = 8


class Adapter(nn.Module):
    """Bottleneck adapter with an internal residual (ShA, and the text tower's adapter after the MLP)."""

    def __init__(self, d: int, reduction: int = REDUCTION):
        super().__init__()
        self.down, self.up = nn.Linear(d, d // reduction), nn.Linear(d // reduction, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class TemporalAdapter(nn.Module):
    """TDA: LN -> s = ReLU(Linear(d->1)); Linear(d->d/r) -> GRU over frames -> GELU -> Linear(d/r->d) (zero init)
    -> times s -> plus the residual. Input: (videos * frames, tokens, d), frames of a video consecutive; set
    `frames` before the forward pass (`set_frames`)."""

    def __init__(self, d: int, reduction: int = REDUCTION, leak_across_videos: bool = False):
        super().__init__()
        r = d // reduction
        self.norm, self.scale = nn.LayerNorm(d), nn.Linear(d, 1)
        self.down, self.gru, self.up = nn.Linear(d, r), nn.GRU(r, r, batch_first=True), nn.Linear(r, d)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.frames: int | None = None
        self.leak_across_videos = leak_across_videos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frames is None:
            raise RuntimeError("TemporalAdapter needs the number of frames per video: call set_frames(model, T) first")
        bt, n_tok, d = x.shape
        if bt % self.frames:
            raise ValueError(f"{bt} frames in the batch is not a whole number of videos of {self.frames} frames")
        z = self.norm(x)
        s = F.relu(self.scale(z))
        h = self.down(z)
        if self.leak_across_videos:   # the official layout: one sequence over all frames of the batch, per token
            h, _ = self.gru(h.transpose(0, 1))
            h = h.transpose(0, 1)
        else:                         # per video and token: (videos * tokens, frames, r)
            v = bt // self.frames
            seq = h.reshape(v, self.frames, n_tok, -1).permute(0, 2, 1, 3).reshape(v * n_tok, self.frames, -1)
            out, _ = self.gru(seq)
            h = out.reshape(v, n_tok, self.frames, -1).permute(0, 2, 1, 3).reshape(bt, n_tok, -1)
        return x + self.up(F.gelu(h)) * s


def _blocks(tower: nn.Module):
    return tower.transformer.resblocks


def add_adapters(model: nn.Module, temporal: str = "tda", text: bool = True, reduction: int = REDUCTION,
                 leak_across_videos: bool = False) -> nn.Module:
    """Insert PE-CLIP's adapters into an open_clip CLIP in place and freeze everything else.

    temporal: "tda" (the Temporal Dynamic Adapter after every image-tower MLP), "adapter" (a plain adapter there:
    the ablation without temporal modelling) or "none" (ShA only). text: adapters in the text tower too.
    """
    if temporal not in ("tda", "adapter", "none"):
        raise ValueError(f"unknown temporal adapter {temporal!r}; use 'tda', 'adapter' or 'none'")
    model.requires_grad_(False)
    towers = [(model.visual, True)] + ([(model, False)] if text else [])
    for tower, is_vision in towers:
        for blk in _blocks(tower):
            d = blk.ln_1.normalized_shape[0]
            blk.ls_1 = nn.Sequential(blk.ls_1, Adapter(d, reduction))
            if is_vision and temporal == "tda":
                blk.ls_2 = nn.Sequential(blk.ls_2, TemporalAdapter(d, reduction, leak_across_videos))
            elif not is_vision or temporal == "adapter":
                blk.ls_2 = nn.Sequential(blk.ls_2, Adapter(d, reduction))
    return model


def set_frames(model: nn.Module, frames: int) -> None:
    """Tell every TemporalAdapter how many consecutive frames make one video."""
    for m in model.modules():
        if isinstance(m, TemporalAdapter):
            m.frames = frames


def adapter_groups(model: nn.Module) -> dict[str, int]:
    """Trainable parameters per group: image-tower ShA, TDA (or its plain replacement), text-tower adapters."""
    out = {"image ShA": 0, "image TDA / adapter": 0, "text adapters": 0}
    for name, mod in model.named_modules():
        if not isinstance(mod, (Adapter, TemporalAdapter)):
            continue
        n = sum(p.numel() for p in mod.parameters())
        if not name.startswith("visual."):
            out["text adapters"] += n
        elif ".ls_1." in name:
            out["image ShA"] += n
        else:
            out["image TDA / adapter"] += n
    return out


def encode_video(model: nn.Module, frames: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Video embeddings: (videos, T, 3, H, W) frames through the image tower as one batch, mean over T."""
    v, t = frames.shape[:2]
    set_frames(model, t)
    e = model.encode_image(frames.flatten(0, 1)).reshape(v, t, -1).mean(1)
    return F.normalize(e, dim=-1) if normalize else e


# ---- the whole model: adapters + multimodal prompts + class texts, cosine logits at temperature 0.01

TEMPERATURE = 0.01   # logits = cos / 0.01, as the official FERPA model (CLIP's logit_scale is not used)


class PEClip(nn.Module):
    """PE-CLIP around an open_clip CLIP: frozen towers, adapters (see `add_adapters`), MaPLe prompts, and one text per
    class (FACS AU descriptions by default). forward(frames: videos x T x 3 x H x W, preprocessed) -> logits."""

    def __init__(self, clip: nn.Module, tokenizer, class_texts, temporal: str = "tda", text_adapters: bool = True,
                 adapters: bool = True, prompts: bool = True, n_ctx: int = 2, depth: int = 9):
        from ..models.prompts import MultiModalPrompts
        super().__init__()
        self.clip = add_adapters(clip, temporal, text_adapters) if adapters else clip.requires_grad_(False)
        self.prompts = MultiModalPrompts(clip, n_ctx, depth) if prompts else None
        prefix = f"{self.prompts.placeholder} " if prompts else ""
        self.register_buffer("tokens", tokenizer([prefix + t for t in class_texts]), persistent=False)

    def param_groups(self, lr_adapters: float = 2e-4, lr_prompts: float = 3e-5, weight_decay: float = 1e-2) -> list[dict]:
        """AdamW groups as the official script: adapters 2e-4, prompt learner 3e-5, weight decay 1e-2."""
        groups = [{"params": [p for p in self.clip.parameters() if p.requires_grad], "lr": lr_adapters}]
        if self.prompts is not None:
            groups.append({"params": list(self.prompts.parameters()), "lr": lr_prompts})
        return [dict(g, weight_decay=weight_decay) for g in groups if g["params"]]

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        from contextlib import nullcontext
        with self.prompts.applied(self.clip) if self.prompts is not None else nullcontext():
            video = encode_video(self.clip, frames)
            text = F.normalize(self.clip.encode_text(self.tokens), dim=-1)
        return video @ text.T / TEMPERATURE
