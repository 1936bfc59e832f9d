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
    threads: int | None = None   # CPU threads of one chapter run (None: torch's default)

    def parallel_runs(self) -> int:
        """How many chapter runs fit side by side on this machine: one per `threads` cores (1 without a limit)."""
        return max(1, (os.cpu_count() or 1) // self.threads) if self.threads else 1


def get_profile(name: str) -> Profile:
    """The profile called `name` ("ci" or "paper"); anything else is an error that lists both."""
    if name == "ci":
        # one thread per chapter run: the tiny models gain little from a second one (a training step of the tiny
        # CLIP, 1.6 times faster on two; the contrastive heads, slower), so the book build runs chapters side by side
        # instead, and a run's numbers do not depend on how many cores the machine has
        return Profile("ci", "cpu", True, "CPU, offline, minutes: the project's tiny CLIP on generated data", threads=1)
    if name == "paper":
        import torch
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        return Profile("paper", dev, False, "GPU + internet: real pretrained weights and datasets, paper schedules")
    raise ValueError(f"unknown profile {name!r}: use one of {', '.join(PROFILES)} "
                     "(ci = CPU/offline/minutes, paper = GPU/internet/the paper's set-up)")


def activate(name: str) -> Profile:
    """Validate `name` and set the process up for it (ci: hubs offline, so a missing weight fails at once). The paper
    profile on a machine without a GPU is an error unless CLIPADAPT_PAPER_ON_CPU=1 asks for the CPU: its schedules
    would otherwise run for days without a word."""
    prof = get_profile(name)
    if prof.name == "paper" and prof.device == "cpu" and os.environ.get("CLIPADAPT_PAPER_ON_CPU") != "1":
        raise RuntimeError("the paper profile needs a GPU and this machine has none that torch can use "
                           "(torch.cuda.is_available() is False): run it on a GPU machine, use profile='ci', or set "
                           "CLIPADAPT_PAPER_ON_CPU=1 to run the paper's set-ups on this CPU (hours to days)")
    if prof.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    return prof
