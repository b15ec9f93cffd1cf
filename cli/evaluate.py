"""``persona evaluate``: full-ranking test metrics of trained base models + popularity, or (``--methods``) of
the adaptation methods on ``cfg.model``; the recipes check the names (models, methods) they are given."""

from __future__ import annotations

from cli import TRAIN_HINT, CliError, add_common, comma_list
from llm_cloud.methods import METHODS
from recsys.models import DEFAULT_MODELS
from serving.config import load_app_config

DEFAULT_EVALUATED = ",".join(["pop", *DEFAULT_MODELS])


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="full-ranking test metrics of trained models + popularity, mean ± std")
    add_common(p)
    p.add_argument("--models", default=DEFAULT_EVALUATED, help="comma-separated: pop and/or trained model names")
    p.add_argument(
        "--methods",
        help=f"adaptation methods for cfg.model instead of base models, comma-separated or 'all': {','.join(METHODS)}",
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


def run_evaluate(args) -> int:
    from recipes.base import evaluate
    from recsys.checkpoint import CheckpointError

    if args.methods:
        return evaluate_methods(args)
    if args.update or args.reuse:
        raise CliError(f"{'--update' if args.update else '--reuse'} needs --methods")
    cfg = load_app_config(args.config, args.overrides)
    try:
        report = evaluate(cfg, comma_list(args.models))
    except CheckpointError as exc:
        raise CliError(str(exc)) from exc
    print(report.table)
    return 0


def evaluate_methods(args) -> int:
    """``--methods``: :func:`recipes.adaptation.evaluate_methods`, which checks the names ('all': every method;
    an unknown one: its ``UnknownMethodError``, one line and exit code 2 from :mod:`cli.main`)."""
    from llm_cloud.artifacts import ArtifactError
    from recipes import adaptation
    from recsys.checkpoint import CheckpointError

    cfg = load_app_config(args.config, args.overrides)
    try:
        report = adaptation.evaluate_methods(cfg, comma_list(args.methods), progress=not args.quiet,
                                             update=args.update, reuse=args.reuse)
    except (CheckpointError, ArtifactError) as exc:
        again = args.update or args.reuse
        raise CliError(f"{exc}; {'run it without --update/--reuse first' if again else TRAIN_HINT}") from exc
    print(f"\n{cfg.dataset} / {cfg.model} ({cfg.data.protocol} protocol), test split, seeds {cfg.seeds}\n")
    print(report.table)
    return 0
