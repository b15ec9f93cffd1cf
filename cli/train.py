"""``persona train``: train the base device model (``model=``) for every seed; checkpoints under ``runs/``."""

from __future__ import annotations

from cli import CliError, add_training
from cli.launch import resolve_nproc, torchrun_self
from recipes.base import check_models
from serving.config import AppConfig, load_app_config


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the base device model for every seed (checkpoints under runs/)")
    add_training(p)
    p.set_defaults(func=run_train)


def model_configs(args, names: list[str]) -> list[AppConfig]:
    """Each of ``names`` (checked by the recipe first) as its own layered config (``models/<name>.yaml``)."""
    check_models(names)
    return [load_app_config(args.config, [*args.overrides, f"model={n}"]) for n in names]


def run_train(args) -> int:
    from recipes.base import train
    from recsys import distributed

    cfg = model_configs(args, [load_app_config(args.config, args.overrides).model])[0]
    nproc = resolve_nproc(args.nproc, cfg.train.nproc)
    if nproc > 1 and not distributed.launched_by_torchrun():
        return torchrun_self("train", args, nproc)
    try:
        paths = train(cfg, progress=not args.quiet)
    except distributed.DistributedError as exc:
        raise CliError(str(exc)) from exc
    if distributed.env_rank() == 0:
        for path in paths:
            print(path)
    return 0
