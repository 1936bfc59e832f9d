"""TPT: test-time prompt tuning (Shu et al., NeurIPS 2022, "Test-Time Prompt Tuning for Zero-Shot Generalization in
Vision-Language Models"; official code azshue/TPT, ported to open_clip in mariodoebler/test-time-adaptation).

Per test image, episodic: make `n_views - 1` random-resized-crop + flip views of it (plus the image itself), keep the
`selection` share of views with the lowest prediction entropy, take one AdamW step on the text-prompt context
(initialised from "a photo of a") to lower the entropy of their *averaged* prediction, then classify the original
image with the tuned prompt and reset. The image encoder is frozen, so view features are computed once per image.
This is the slow single-sample comparison of the BATCLIP paper: many image forwards and two text passes per image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..models.prompts import PromptContext
from .base import option
from .registry import register
from .tta import TTAConfig, TTAMethod


@dataclass
class TPTConfig(TTAConfig):
    """Defaults are the official ones: AdamW lr 5e-3, one step, 64 views, top 10% most confident, episodic."""
    lr: float = option(5e-3, "learning rate of the prompt context", paper=5e-3)
    episodic: bool = option(True, "reset after every image (TPT is episodic)", paper=True)
    n_views: int = option(64, "the original image + augmented views", paper=64)
    selection: float = option(0.1, "share of views kept (lowest entropy)", paper=0.1)
    crop_scale: tuple[float, float] = option((0.08, 1.0), "RandomResizedCrop's scale, as TPT's ImageNet views",
                                             paper=(0.08, 1.0))


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean of the views' softmax predictions, computed in log space."""
    logp = logits.log_softmax(1)
    avg = torch.logsumexp(logp, 0) - math.log(logits.shape[0])
    return -(avg.exp() * avg).sum()


def confident_views(logits: torch.Tensor, share: float) -> torch.Tensor:
    """Indices of the `share` of rows with the lowest prediction entropy (at least one)."""
    ent = -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    return ent.argsort()[:max(1, int(logits.shape[0] * share))]


@register("tpt", "TPT")
class TPT(TTAMethod):
    """TPT (Shu et al., NeurIPS 2022): per image, tune the prompt on confident augmented views (episodic)."""
    config_class = TPTConfig
    adapt_text = True
    min_batch = 1   # tunes per image

    def __init__(self, model, tokenizer, classnames, cfg: TPTConfig | None = None):
        cfg = cfg or TPTConfig()
        if not cfg.episodic:
            raise ValueError("TPT tunes a prompt per test image and resets after it: episodic must be True")
        if cfg.n_views < 2 or not 0 < cfg.selection <= 1:
            raise ValueError(f"TPT needs n_views >= 2 and 0 < selection <= 1, got {cfg.n_views} and {cfg.selection}")
        super().__init__(model, tokenizer, classnames, cfg)

    def configure_model(self) -> None:
        super().configure_model()
        self.prompt = PromptContext(self.model, self.tokenizer, self.cfg.template).to(self.tokens.device)

    def collect_params(self):
        return [self.prompt.ctx]

    def _text_features(self) -> torch.Tensor:
        with self.prompt.applied(self.model):
            return F.normalize(self.model.encode_text(self.tokens), dim=-1)

    def views(self, image: torch.Tensor) -> torch.Tensor:
        """The image and `n_views - 1` random views of it at the model's resolution."""
        aug = v2.Compose([v2.RandomResizedCrop(image.shape[-2:], scale=self.cfg.crop_scale, antialias=True),
                          v2.RandomHorizontalFlip()])
        return torch.stack([image] + [aug(image) for _ in range(self.cfg.n_views - 1)])

    def loss(self, out):
        logits = out["logits"]
        return marginal_entropy(logits[confident_views(logits.detach(), self.cfg.selection)])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per image: reset, tune the prompt on its confident views, then classify it with the tuned prompt."""
        self.check_input(images)
        scale = self.model.logit_scale.exp()
        out = []
        for image in images:
            self.reset()
            with torch.no_grad(), self.autocast(image.device):
                feats = F.normalize(self.model.encode_image(self.views(image)).float(), dim=-1)
            for _ in range(self.cfg.steps):
                with torch.enable_grad(), self.autocast(image.device):
                    loss = self.loss({"logits": scale * feats @ self._text_features().float().T})
                self.update(loss)
            with torch.no_grad(), self.autocast(image.device):
                out.append((scale * feats[:1] @ self._text_features().float().T)[0])
        self.reset()
        return torch.stack(out)
