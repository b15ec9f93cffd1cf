"""``persona run``: the main job (:func:`recipes.main.main_job`): prepare, codebook, train + evaluate the base
models, then the serving adapter + prototype bank (seed 0) and the served checkpoint's item delta."""

from __future__ import annotations

from cli import TRAIN_HINT, CliError, add_common, comma_list
from cli.adapter import print_serving
from cli.codebook import print_codebook, recipe_errors
from cli.launch import torchrun_self
from cli.train import model_configs
from recsys.models import DEFAULT_MODELS
from serving.config import load_app_config


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="main job: prepare, codebook, train + evaluate base models, adapter + prototypes (seed 0)"
    )
    add_common(p)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated base models")
    p.add_argument("--skip-adapter", action="store_true", help="base models only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_main)


def run_main(args) -> int:
    from llm_cloud.artifacts import ArtifactError
    from recipes.main import LaunchError, main_job
    from recsys import distributed
    from recsys.checkpoint import CheckpointError

    model_cfgs = model_configs(args, comma_list(args.models))
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
