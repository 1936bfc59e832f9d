"""The `clipadapt` command.

    clipadapt methods                 # every registered method: kind, family, backbones, chapter
    clipadapt methods spt-lora        # one method: what it does and its options (default, paper value, meaning)
    clipadapt book build --profile ci # the book (also: run, check, colab); same as python -m clipadapt.book
    clipadapt sweep list FILE         # sweeps over papermill runs; same as python -m clipadapt.sweep
    clipadapt arena bench             # the arena's efficiency ratios; same as python -m clipadapt.arena
    clipadapt golden [--write]        # each chapter's ci numbers against tests/golden (what moved, by how much)
    clipadapt adapt DATA --out DIR    # the arena's methods on your own labelled images; adapters saved in DIR
    clipadapt predict --adapter DIR/adapters/METHOD IMAGE...   # a saved adapter's label for each image
    clipadapt adapt-online STREAM --classes a,b --out DIR      # zero-shot, Tent, BATCLIP over your image stream
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


def adapt(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="clipadapt adapt", description="Compare the arena's methods on your own labelled "
                                 "images: a folder with one subfolder per class, or a CSV path,label[,split].")
    ap.add_argument("data", help="the folder of class folders, or the CSV")
    ap.add_argument("--out", required=True, help="folder for results.json, adapters/ and jobs/ (a rerun resumes)")
    ap.add_argument("--backbone", default="clipadapt-tiny",
                    help="clipadapt-tiny (offline, default), an open_clip NAME:TAG (ViT-B-16:openai) or NAME:/path.pt")
    ap.add_argument("--methods", help="comma-separated arena rows or registry names (default: every row that fits)")
    ap.add_argument("--shots", type=int, default=16, help="labelled images per class to learn from (default 16)")
    ap.add_argument("--seeds", type=int, default=3, help="runs per method, each on a new few-shot sample (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="the root seed of the test split and the runs (default 0)")
    ap.add_argument("--test-fraction", type=float, default=0.25, help="share of each class held out (default 0.25)")
    ap.add_argument("--names", help="a file of lines folder<TAB>name[<TAB>description] for the class texts")
    a = ap.parse_args(argv)
    from .adapt import adapt as run_adapt
    try:
        res = run_adapt(a.data, a.out, a.backbone, a.methods.split(",") if a.methods else None, a.shots, a.seeds,
                        a.seed, a.test_fraction, a.names)
    except (ValueError, FileNotFoundError) as e:
        ap.exit(2, f"error: {e}\n")
    except KeyboardInterrupt:
        print(f"\ninterrupted: what finished is in {a.out}/results.json; run the same command to resume",
              file=sys.stderr)
        return 130
    pick = res["tables"].get("pick", {})
    for row in res["tables"].get("summary", []):
        std = "" if row["std"] is None else f" ± {row['std']:.1f}"
        print(f"{row['method']:28s} {row['mean']:5.1f}%{std:8s} trainable {row['trainable']:>12,.0f}")
    if pick:
        print(f"\npick (within one std of {pick['best']}, least training memory): {pick['pick']}")
    skipped = res["tables"].get("skipped", [])
    print(f"{len(skipped)} files skipped; results in {a.out}/results.json, adapters in {a.out}/adapters/")
    return 0


def predict(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="clipadapt predict", description="A saved adapter's label for each image.")
    ap.add_argument("images", nargs="+", help="image files")
    ap.add_argument("--adapter", required=True, help="DIR/adapters/<method> of a `clipadapt adapt` run")
    ap.add_argument("--csv", help="also write the rows to this CSV file")
    a = ap.parse_args(argv)
    from .adapt import predict as run_predict
    try:
        df = run_predict(a.adapter, a.images)
    except (ValueError, FileNotFoundError) as e:
        ap.exit(2, f"error: {e}\n")
    for r in df.itertuples():
        print(f"{r.path}\t{r.label}\t{r.probability:.3f}" if r.error is None else f"{r.path}\t-\t{r.error}")
    if a.csv:
        df.to_csv(a.csv, index=False)
    return 0 if df["error"].isna().all() else 1


def adapt_online(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="clipadapt adapt-online", description="Zero-shot, Tent and BATCLIP over a "
                                 "stream of your images in order (a folder sorted by name, or a CSV path[,label]).")
    ap.add_argument("stream", help="the folder of images, or the CSV (with labels, accuracy is measured)")
    ap.add_argument("--out", required=True, help="folder for online.json")
    ap.add_argument("--backbone", default="clipadapt-tiny", help="as for `clipadapt adapt`")
    ap.add_argument("--classes", help="comma-separated class names (default: the CSV's labels)")
    ap.add_argument("--names", help="a file of lines class<TAB>name[<TAB>description] for the class texts")
    ap.add_argument("--batch-size", type=int, default=32, help="images per batch, in stream order (default 32)")
    a = ap.parse_args(argv)
    from .online import adapt_online as run_online
    try:
        res = run_online(a.stream, a.out, a.backbone, a.classes.split(",") if a.classes else None, a.names,
                         a.batch_size)
    except (ValueError, FileNotFoundError) as e:
        ap.exit(2, f"error: {e}\n")
    for k, v in res["metrics"].items():
        print(f"{k:40s} {v:8.2f}")
    if res["info"]["cannot_tell"]:
        print("\n" + res["info"]["cannot_tell"])
    print(f"{len(res['tables']['skipped'])} files skipped; details in {a.out}/online.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"methods": "list the registered methods", "book": "build the book (python -m clipadapt.book)",
                "sweep": "sweeps of notebook runs (python -m clipadapt.sweep)",
                "arena": "the arena's benchmark (python -m clipadapt.arena)",
                "golden": "chapters' ci numbers against their golden records (tests/golden)",
                "adapt": "the arena's methods on your own labelled images", "predict": "a saved adapter on images",
                "adapt-online": "test-time methods over a stream of your images"}
    if not argv or argv[0] not in commands:
        usage = "\n".join(f"  {k:13s} {v}" for k, v in commands.items())
        print(f"usage: clipadapt COMMAND [ARGS]\n\ncommands:\n{usage}\n\n`clipadapt COMMAND --help` for one command.",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    local = {"methods": methods, "adapt": adapt, "predict": predict, "adapt-online": adapt_online}
    if cmd in local:
        return local[cmd](rest)
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
