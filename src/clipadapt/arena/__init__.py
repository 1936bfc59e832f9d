"""The arena: the book's methods side by side on one backbone, one set of tasks and one measurement.

None of the five papers compares itself with the other four. Here every method starts from the same CLIP (the tiny
one on `ci`, OpenAI's ViT-B/16 on `paper`), sees the same few labelled images of a task, trains with the same loop
(`clipadapt.finetune.fit_classifier`: AdamW, cosine schedule, no augmentation; full fine-tuning at a tenth of the
learning rate) and is measured the same way:
accuracy on the task's test split, trainable and stored parameters, the memory of one training step
(`clipadapt.bench.training_memory`), seconds per step and the wall time of the whole adaptation.

Methods (`ARENA`, by name): zero-shot CLIP; a linear probe, full fine-tuning, LoRA (peft), bottleneck adapters and
SPT-LoRA on the image tower as a timm ViT (SPT's chapter); MaPLe prompts and PE-CLIP's adapters on the two towers
with text classifiers (PE-CLIP's chapter); VL-PET's gated adapters on the image tower (VL-PET's chapter); a
contrastive head on the frozen image embeddings with a logistic regression (the contrastive chapter). Image
classifiers are fed images (batch x 3 x H x W); the CLIP-text models see each image as a clip of one frame. Each
backbone has its own full fine-tuning as the reference for memory: the image tower with a linear head, and CLIP's
two towers with the text head.

Also here: face clips as a task (the CLIP-text models take clips whole; image classifiers average their frames'
features, `FramePooled`); the robustness track (`robustness`: Tent or BATCLIP on top of every adapted model on
corrupted streams, through one test-time view of both backbones, `feature_view` and `OnTop`); and the benchmark of
the papers' efficiency ratios (`benchmark`, `python -m clipadapt.arena bench`; BATCLIP's step on a paper
architecture: `tta_step`, `python -m clipadapt.arena tta-step`).
"""
from __future__ import annotations

from .bench import RATIO_NEEDS, benchmark, main, tta_step
from .core import (ARENA, FULL, TEMPLATE, ArenaConfig, ArenaMethod, Built, Context, FramePooled, ImagesAsClips,
                   build, few_shot, frames_of, get_method, pick, run, step_memory_mb, summary)
from .robustness import TEST_TIME, OnTop, RobustnessConfig, feature_view, robustness

__all__ = ["ARENA", "FULL", "RATIO_NEEDS", "TEMPLATE", "TEST_TIME", "ArenaConfig", "ArenaMethod", "Built", "Context",
           "FramePooled", "ImagesAsClips", "OnTop", "RobustnessConfig", "benchmark", "build", "feature_view",
           "few_shot", "frames_of", "get_method", "main", "pick", "robustness", "run", "step_memory_mb", "summary",
           "tta_step"]
