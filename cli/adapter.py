"""``persona adapter``: train the adapter and build the prototype bank for every seed (serving artifacts)."""

from __future__ import annotations

from cli import TRAIN_HINT, CliError, add_training
from cli.launch import resolve_nproc, torchrun_self
from serving.config import load_app_config


def add_parser(sub) -> None:
    p = sub.add_parser("adapter", help="train the cloud adapter + prototype bank on a trained base model")
    add_training(p)
    p.set_defaults(func=run)


def print_serving(written) -> None:
    """One line per seed the adapter recipe wrote (rank 0 alone gets any)."""
    for w in written:
        print(f"seed {w.seed}: {w.adapter_dir}, {w.bank_dir} ({w.size} prototypes), {w.prototypes}")


def run(args) -> int:
    from llm_cloud.artifacts import ArtifactError
    from recipes.adaptation import adapter
    from recsys import distributed
    from recsys.checkpoint import CheckpointError

    cfg = load_app_config(args.config, args.overrides)
    nproc = resolve_nproc(getattr(args, "nproc", None), cfg.train.nproc)
    if nproc > 1 and not distributed.launched_by_torchrun():
        return torchrun_self("adapter", args, nproc)
    try:
        written = adapter(cfg, progress=not args.quiet)
    except (CheckpointError, ArtifactError) as exc:
        raise CliError(f"{exc}; {TRAIN_HINT}") from exc
    except distributed.DistributedError as exc:
        raise CliError(str(exc)) from exc
    print_serving(written)
    return 0
