"""The `clipadapt` command.

    clipadapt methods                 # every registered method: kind, family, backbones, chapter
    clipadapt methods spt-lora        # one method: what it does and its options (default, paper value, meaning)
    clipadapt book build --profile ci # the book (also: run, check, colab); same as python -m clipadapt.book
    clipadapt sweep list FILE         # sweeps over papermill runs; same as python -m clipadapt.sweep
    clipadapt arena bench             # the arena's efficiency ratios; same as python -m clipadapt.arena
    clipadapt golden [--write]        # each chapter's ci numbers against tests/golden (what moved, by how much)
"""
from __future__ import annotations

import argparse
import sys


def methods(argv: list[str]) -> int:
    import pandas as pd

    from .methods import method_class, method_table
    from .methods.base import config_help
    ap = argparse.ArgumentParser(prog="clipadapt methods", description="The registered methods, or one in detail.")
    ap.add_argument("name", nargs="?", help="a method's registry name: show its options")
    ap.add_argument("--kind", choices=["labelled", "test-time"], help="only methods of this kind")
    ap.add_argument("--backbone", choices=["image", "clip", "vl", "embeddings"], help="only methods for this backbone")
    a = ap.parse_args(argv)
    width = {"display.width": 200, "display.max_colwidth": 90}
    if a.name:
        try:
            cls = method_class(a.name)
        except ValueError as e:
            ap.exit(2, f"error: {e}\n")
        print(f"{cls.name}: {cls.title} ({cls.kind}, {cls.family}; backbones: {', '.join(cls.backbones)}; "
              f"chapter: {cls.chapter})\n\n{(cls.__doc__ or '').strip()}\n")
        rows = [{**r, "default": repr(r["default"]), "paper": "-" if r["paper"] is None else str(r["paper"])} for r in config_help(cls.config_class)]
        with pd.option_context(*[x for kv in width.items() for x in kv]):
            print(pd.DataFrame(rows).to_string(index=False, justify="left") if rows else "no options")
        return 0
    df = pd.DataFrame(method_table())
    if a.kind:
        df = df[df["kind"] == a.kind]
    if a.backbone:
        df = df[df["backbones"].str.split(", ").map(lambda b: a.backbone in b)]
    with pd.option_context(*[x for kv in width.items() for x in kv]):
        print(df.drop(columns=["title"]).to_string(index=False))
    print(f"\n{len(df)} methods. `clipadapt methods NAME` shows one method's options.")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"methods": "list the registered methods", "book": "build the book (python -m clipadapt.book)",
                "sweep": "sweeps of notebook runs (python -m clipadapt.sweep)",
                "arena": "the arena's benchmark (python -m clipadapt.arena)",
                "golden": "chapters' ci numbers against their golden records (tests/golden)"}
    if not argv or argv[0] not in commands:
        usage = "\n".join(f"  {k:8s} {v}" for k, v in commands.items())
        print(f"usage: clipadapt COMMAND [ARGS]\n\ncommands:\n{usage}\n\n`clipadapt COMMAND --help` for one command.",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "methods":
        return methods(rest)
    if cmd == "golden":
        from .chapters import golden
        return golden.main(rest)
    if cmd == "book":
        from . import book
        book.main(rest)
    elif cmd == "sweep":
        from . import sweep
        sweep.main(rest)
    else:
        from . import arena
        return arena.main(rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
