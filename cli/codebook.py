"""``persona codebook``: encode a dataset's items with the configured backbone and build the semantic codebook.

Artifacts go to ``<output_dir>/<dataset>/codebook/`` (FAISS index, semantic IDs, metadata, item
embeddings) and the quality report to ``<reports_dir>/codebook/<dataset>.json`` and ``.md``
(:func:`recipes.codebook.codebook`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cli import CliError, add_common
from codebook import CodebookError
from llm_cloud.backbones import BackboneError
from llm_cloud.context_text import ContextError
from recipes.codebook import CodebookResult, codebook
from serving.config import AppConfig, load_app_config


def add_parser(sub) -> None:
    p = sub.add_parser("codebook", help="encode items with the LLM backbone and build the semantic codebook")
    add_common(p)
    p.set_defaults(func=run)


def expand_shorthand(overrides: list[str]) -> list[str]:
    """``backbone=hf`` → ``backbone.name=hf``, so it merges with the YAML section and other ``backbone.*`` keys."""
    return [f"backbone.name={o.split('=', 1)[1]}" if o.startswith("backbone=") else o for o in overrides]


@contextmanager
def recipe_errors() -> Iterator[None]:
    """The backbone's, codebook's and item context's errors as one-line CLI errors."""
    try:
        yield
    except (BackboneError, CodebookError, ContextError) as exc:
        raise CliError(str(exc)) from exc


def print_codebook(cfg: AppConfig, out: CodebookResult) -> None:
    report, k = out.report, cfg.codebook.recall_k
    util = ", ".join(f"{100 * lv['utilisation']:.0f}%" for lv in report["per_level"])
    print(
        f"{cfg.dataset}: {report['n_items']} items, {report['levels']} levels x {cfg.codebook.bits} bits; "
        f"utilisation {util}; collisions learned {100 * report['collision_rate_learned']:.2f}% / "
        f"full {100 * report['collision_rate']:.2f}%; recon {report['reconstruction']['relative']:.3f}; "
        f"recall@{k} {report[f'recall@{k}']:.3f}\n{out.directory}\n{out.report_stem}.md"
    )


def run(args) -> int:
    cfg = load_app_config(args.config, expand_shorthand(args.overrides))
    with recipe_errors():
        out = codebook(cfg)
    print_codebook(cfg, out)
    return 0
