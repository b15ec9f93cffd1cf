"""The served checkpoint's item-table delta (``make run``'s last step; :mod:`llm_cloud.item_delta`).

The device's scoring rows fitted toward the default teacher (every model and seed the main job trained, the served
checkpoint among them) on the validation rows — all of them before the test period, so nothing after a test row's
time reaches it — and written beside the checkpoint (``item-delta.json``, fp32). The cloud's distilled editor
puts it in the bank snapshot the device fetches, and solves its per-request edits against the table with it.
"""

from __future__ import annotations

from pathlib import Path

from llm_cloud.adapter_data import row_states
from llm_cloud.item_delta import ItemDelta, fit_item_delta
from llm_cloud.teacher import EnsembleTeacher
from recipes.config import RecipeConfig
from recsys import run_layout
from recsys.atomic_io import atomic_write_text
from recsys.checkpoint import load_checkpoint
from recsys.experiment import load_dataset_split
from recsys.models import EditableSeqRec
from recsys.splits import SplitData
from recsys.wire import ItemTableDelta

BATCH = 512


def fit_served_item_delta(cfg: RecipeConfig, split: SplitData | None = None, progress: bool = True) -> Path | None:
    """Fit and write the delta of ``cfg``'s served checkpoint (its first seed); None (nothing written) when the run
    has no other checkpoint to teach it."""
    run = cfg.run_dir(cfg.seeds[0])
    teachers = run_layout.main_job_checkpoints(cfg.output_dir, cfg.dataset, cfg.seeds)
    if not any(t.resolve() != run.resolve() for t in teachers):
        return None
    split = split or load_dataset_split(cfg)
    model, _, tokens = load_checkpoint(run)
    teacher = EnsembleTeacher.load(teachers)
    teacher.check_serves(tokens, str(run))
    delta = fit_on_rows(model, teacher, split.eval_rows("valid"), cfg, progress)
    out = run_layout.item_delta_file(run)
    atomic_write_text(out, ItemTableDelta.of(delta.ids, delta.rows, "fp32").model_dump_json())
    return out


def fit_on_rows(model: EditableSeqRec, teacher: EnsembleTeacher, rows, cfg: RecipeConfig,
                progress: bool = True) -> ItemDelta:  # fmt: skip
    """The delta fitted on RecBole ``rows`` (their histories' user states and the teacher's distributions)."""
    states, _ = row_states(model, rows, BATCH)
    targets = teacher.log_probs_batched(rows["item_id_list"], rows["item_length"], BATCH, progress)
    return fit_item_delta(model, states, targets, cfg.item_delta)
