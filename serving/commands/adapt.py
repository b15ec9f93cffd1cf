"""``persona adapter``: train the adapter and build the prototype bank for every seed (serving artefacts)."""

from __future__ import annotations

from serving.commands import CliError, add_common
from serving.commands.launch import resolve_nproc, torchrun_self
from serving.config import load_app_config


def add_parser(sub) -> None:
    p = sub.add_parser("adapter", help="train the cloud adapter + prototype bank on a trained base model")
    add_common(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--nproc", type=int, help="DDP processes on this machine, relaunched under torchrun (default train.nproc)"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from llm_cloud.artifacts import ArtifactError
    from llm_cloud.experiment import adaptation_for_seed
    from recsys import distributed
    from recsys.checkpoint import CheckpointError
    from recsys.experiment import load_dataset_split

    cfg = load_app_config(args.config, args.overrides)
    nproc = resolve_nproc(getattr(args, "nproc", None), cfg.train.nproc)
    if nproc > 1 and not distributed.launched_by_torchrun():
        return torchrun_self("adapter", args, nproc)
    try:
        with distributed.process_group(cfg):
            split = distributed.rank0_first(load_dataset_split, cfg)
            for seed in cfg.seeds:
                try:
                    ad = adaptation_for_seed(cfg, seed, split, progress=not args.quiet)
                except (CheckpointError, ArtifactError) as exc:
                    raise CliError(f"{exc}; run `persona train` (and `persona codebook`) first") from exc
                ad.adapter("main")  # DDP under torchrun; rank 0 writes it
                if distributed.is_rank0():  # the bank is a cheap k-means + per-cluster fine-tuning: rank 0 alone
                    bank = ad.bank(cfg.prototypes.variant)
                    path = cfg.run_dir(seed) / "prototypes.json"
                    bank.snapshot().save(path)
                    run_dir, variant = cfg.run_dir(seed), cfg.prototypes.variant
                    print(f"seed {seed}: {run_dir}/adapter-main, {run_dir}/bank-{variant} ({bank.size} prototypes), "
                          f"{path}")
                with distributed.collective_errors(cfg.train.dist_timeout_s):
                    distributed.barrier()
    except distributed.DistributedError as exc:
        raise CliError(str(exc)) from exc
    return 0
