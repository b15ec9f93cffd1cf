"""``persona train``, ``persona evaluate`` and ``persona run`` (the main job) for the base models."""

from __future__ import annotations

from pathlib import Path

from serving.commands import CliError, add_common
from serving.commands.launch import resolve_nproc, torchrun_self
from serving.config import AppConfig, load_app_config

BASE_MODELS = ["sasrec", "gru4rec"]
# the main job trains the serving adapter on a sample of training windows to stay inside `make run`'s budget
MAIN_JOB_ADAPTER = ["adapter.samples_per_epoch=10000", "adapter.epochs=3"]


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the base device model for every seed (checkpoints under runs/)")
    add_common(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--nproc", type=int, help="DDP processes on this machine, relaunched under torchrun (default train.nproc)"
    )
    p.set_defaults(func=run_train)

    p = sub.add_parser("evaluate", help="full-ranking test metrics of trained models + popularity, mean ± std")
    add_common(p)
    p.add_argument("--models", default="pop,sasrec,gru4rec", help="comma-separated: pop and/or trained model names")
    p.add_argument(
        "--methods",
        help="adaptation methods for cfg.model instead of base models, comma-separated or 'all': "
        "static,finetune,duet,edit,proto,proto-centre,proto-res,proto-dyn,served,no-xlayer,no-codebook,"
        "context,no-context,solid",
    )
    p.add_argument(
        "--update",
        action="store_true",
        help="with --methods: evaluate the adapters/banks saved by an earlier run (same config) and replace "
        "these methods in its report",
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
    from recsys import distributed
    from recsys.experiment import train_seeds

    cfg = _model_configs(args, [load_app_config(args.config, args.overrides).model])[0]
    nproc = resolve_nproc(args.nproc, cfg.train.nproc)
    if nproc > 1 and not distributed.launched_by_torchrun():
        return torchrun_self("train", args, nproc)
    try:
        paths = train_seeds(cfg, progress=not args.quiet)
    except distributed.DistributedError as exc:
        raise CliError(str(exc)) from exc
    if distributed.env_rank() == 0:
        for path in paths:
            print(path)
    return 0


def run_evaluate(args) -> int:
    import time

    from recsys.checkpoint import CheckpointError
    from recsys.experiment import evaluate_models, report_base

    if args.methods:
        return run_methods(args)
    if args.update:
        raise CliError("--update needs --methods")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    _model_configs(args, [n for n in names if n != "pop"])
    cfg = load_app_config(args.config, args.overrides)
    t0 = time.perf_counter()
    try:
        results = evaluate_models(cfg, names)
    except CheckpointError as exc:
        raise CliError(str(exc)) from exc
    print(report_base(cfg, results, time.perf_counter() - t0))
    return 0


def run_methods(args) -> int:
    from llm_cloud.artifacts import ArtifactError
    from llm_cloud.evaluation import METHODS
    from llm_cloud.experiment import merge_with_report, report_adaptation, run_adaptation
    from recsys.checkpoint import CheckpointError

    cfg = load_app_config(args.config, args.overrides)
    methods = METHODS if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CliError(f"unknown method '{unknown[0]}' (known: {', '.join(METHODS)})")
    try:
        out = run_adaptation(cfg, methods, progress=not args.quiet, reuse=args.update)
        if args.update:
            out = merge_with_report(cfg, out)
    except (CheckpointError, ArtifactError) as exc:
        hint = "run it without --update first" if args.update else "run `persona train` (and `persona codebook`) first"
        raise CliError(f"{exc}; {hint}") from exc
    print(f"\n{cfg.dataset} / {cfg.model} ({cfg.data.protocol} protocol), test split, seeds {cfg.seeds}\n")
    print(report_adaptation(cfg, out))
    return 0


def run_main(args) -> int:
    import argparse

    from recsys.experiment import run_base
    from serving.commands import adapt, codebook

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    model_cfgs = _model_configs(args, names)
    cfg = load_app_config(args.config, args.overrides)
    # the semantic codebook first: it writes the LLM item side file the device models read (model_params.item_side)
    needs_side = any(c.model_params.item_side != "none" for c in model_cfgs) and not cfg.item_side_path().is_file()
    has_codebook = (Path(cfg.output_dir) / cfg.dataset / "codebook" / "meta.json").is_file()
    if needs_side or (not args.skip_adapter and not has_codebook):
        codebook.run(argparse.Namespace(config=args.config, overrides=list(args.overrides)))
    if cfg.train.nproc > 1:  # each model trains as train.nproc DDP ranks, then evaluation runs here
        import time

        from recsys.experiment import evaluate_models, load_dataset_split, report_base

        t0 = time.perf_counter()
        load_dataset_split(cfg)  # prepare the data once, before the ranks start
        for name in names:
            code = torchrun_self("train", args, cfg.train.nproc, [*args.overrides, f"model={name}"])
            if code:
                return code
        table = report_base(cfg, evaluate_models(cfg, ["pop", *names]), time.perf_counter() - t0)
    else:
        table = run_base(model_cfgs, progress=not args.quiet)
    print(f"\n{cfg.dataset} ({cfg.data.protocol} protocol), test split, RecBole full ranking, seeds {cfg.seeds}\n")
    print(table + "\n", flush=True)
    if args.skip_adapter:
        return 0
    # the cloud artefacts the demo services use: adapter + prototype bank (first seed)
    first = [f"model={names[0]}", f"seeds=[{cfg.seeds[0]}]", *MAIN_JOB_ADAPTER]
    return adapt.run(argparse.Namespace(config=args.config, overrides=[*args.overrides, *first], quiet=args.quiet))
