"""The two run profiles. Only sizes and sources differ between them; every notebook takes `profile` as a parameter."""
from __future__ import annotations

import os
from dataclasses import dataclass

PROFILES = ("ci", "paper")


@dataclass(frozen=True)
class Profile:
    name: str
    device: str        # "cpu" on ci; "cuda" when a GPU is visible on paper
    offline: bool      # ci never touches a model hub (HF_HUB_OFFLINE=1)
    description: str


def get_profile(name: str) -> Profile:
    """The profile called `name` ("ci" or "paper"); anything else is an error that lists both."""
    if name == "ci":
        return Profile("ci", "cpu", True, "CPU, offline, minutes: the project's tiny CLIP on generated data")
    if name == "paper":
        import torch
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        return Profile("paper", dev, False, "GPU + internet: real pretrained weights and datasets, paper schedules")
    raise ValueError(f"unknown profile {name!r}: use one of {', '.join(PROFILES)} "
                     "(ci = CPU/offline/minutes, paper = GPU/internet/the paper's set-up)")


def activate(name: str) -> Profile:
    """Validate `name` and set the process up for it (ci: hubs offline, so a missing weight fails at once)."""
    prof = get_profile(name)
    if prof.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    return prof
