"""``persona train``, ``persona evaluate`` and ``persona run``: arguments → config → a recipe → a summary."""

from __future__ import annotations

from serving.commands import CliError, add_common, add_training
from serving.commands.launch import resolve_nproc, torchrun_self
from serving.config import AppConfig, load_app_config

BASE_MODELS = ["sasrec", "gru4rec"]
TRAIN_HINT = "run `persona train` (and `persona codebook`) first"


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the base device model for every seed (checkpoints under runs/)")
    add_training(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("evaluate", help="full-ranking test metrics of trained models + popularity, mean ± std")
    add_common(p)
    p.add_argument("--models", default="pop,sasrec,gru4rec", help="comma-separated: pop and/or trained model names")
    p.add_argument(
        "--methods",
        help="adaptation methods for cfg.model instead of base models, comma-separated or 'all': "
        "static,finetune,duet,edit,proto,proto-centre,proto-res,proto-dyn,served,served-dyn,cached,no-xlayer,"
        "no-codebook,context,no-context,solid",
    )
    p.add_argument(
        "--update",
        action="store_true",
        help="with --methods: evaluate the adapters/banks saved by an earlier run (same config) and replace "
        "these methods in its report",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="with --methods: evaluate the adapters/banks saved by earlier runs (same config; e.g. trained one seed "
        "at a time) into a new report",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser(
        "run", help="main job: prepare, codebook, train + evaluate base models, adapter + prototypes (seed 0)"
    )
    add_common(p)
    p.add_argument("--models", default=",".join(BASE_MODELS), help="comma-separated base models")
    p.add_argument("--skip-adapter", action="store_true", help="base models only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_main)


def _model_configs(args, names: list[str]) -> list[AppConfig]:
    from recsys.models import MODELS

    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise CliError(f"unknown model '{unknown[0]}' (known: {', '.join(sorted(MODELS))})")
    return [load_app_config(args.config, [*args.overrides, f"model={n}"]) for n in names]


def run_train(args) -> int:
    from recipes.base import train
    from recsys import distributed

    cfg = _model_configs(args, [load_app_config(args.config, args.overrides).model])[0]
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


def run_evaluate(args) -> int:
    from recipes.base import evaluate
    from recsys.checkpoint import CheckpointError

    if args.methods:
        return run_methods(args)
    if args.update or args.reuse:
        raise CliError(f"{'--update' if args.update else '--reuse'} needs --methods")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    _model_configs(args, [n for n in names if n != "pop"])
    cfg = load_app_config(args.config, args.overrides)
    try:
        report = evaluate(cfg, names)
    except CheckpointError as exc:
        raise CliError(str(exc)) from exc
    print(report.table)
    return 0


def run_methods(args) -> int:
    from llm_cloud.artifacts import ArtifactError
    from llm_cloud.methods import METHODS
    from recipes.adaptation import evaluate_methods
    from recsys.checkpoint import CheckpointError

    cfg = load_app_config(args.config, args.overrides)
    methods = METHODS if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CliError(f"unknown method '{unknown[0]}' (known: {', '.join(METHODS)})")
    try:
        report = evaluate_methods(cfg, methods, progress=not args.quiet, update=args.update, reuse=args.reuse)
    except (CheckpointError, ArtifactError) as exc:
        again = args.update or args.reuse
        raise CliError(f"{exc}; {'run it without --update/--reuse first' if again else TRAIN_HINT}") from exc
    print(f"\n{cfg.dataset} / {cfg.model} ({cfg.data.protocol} protocol), test split, seeds {cfg.seeds}\n")
    print(report.table)
    return 0


def run_main(args) -> int:
    from llm_cloud.artifacts import ArtifactError
    from recipes.main import LaunchError, main_job
    from recsys import distributed
    from recsys.checkpoint import CheckpointError
    from serving.commands.adapter import print_serving
    from serving.commands.codebook import print_codebook, recipe_errors

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    model_cfgs = _model_configs(args, names)
    cfg = load_app_config(args.config, args.overrides)

    def relaunch(command: str, extra: list[str]) -> None:
        code = torchrun_self(command, args, cfg.train.nproc, [*args.overrides, *extra])
        if code:
            raise LaunchError(command, code)

    try:
        with recipe_errors():
            out = main_job(cfg, model_cfgs, args.skip_adapter, progress=not args.quiet, relaunch=relaunch)
    except LaunchError as exc:
        return exc.code
    except (CheckpointError, ArtifactError) as exc:
        raise CliError(f"{exc}; {TRAIN_HINT}") from exc
    except distributed.DistributedError as exc:
        raise CliError(str(exc)) from exc
    if out.codebook is not None:
        print_codebook(cfg, out.codebook)
    print(f"\n{cfg.dataset} ({cfg.data.protocol} protocol), test split, RecBole full ranking, seeds {cfg.seeds}\n")
    print(out.base.table + "\n", flush=True)
    print_serving(out.serving)
    return 0
