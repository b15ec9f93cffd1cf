"""Markdown rendering of a codebook quality report (the JSON report is the dict itself)."""

from __future__ import annotations


def quality_markdown(report: dict, title: str) -> str:
    k = next(key for key in report if key.startswith("recall@"))
    lines = [
        f"# {title}",
        "",
        f"- items: {report['n_items']}, embedding dim: {report['dim']}",
        f"- learned levels: {report['levels']} x {report['bits']} bits; semantic ID width: {report['width']} "
        f"(level sizes {report['level_sizes']})",
        f"- collision rate, learned codes: {100 * report['collision_rate_learned']:.2f}% "
        f"(identical embeddings: {100 * report['duplicate_vector_rate']:.2f}%); "
        f"full IDs: {100 * report['collision_rate']:.2f}%",
        f"- reconstruction error (relative squared, unit vectors): {report['reconstruction']['relative']:.4f}",
        f"- {k} of codebook (FAISS ADC) neighbours vs exact flat neighbours: {report[k]:.4f}",
        "",
        "| level | size | used | utilisation | entropy (bits) | perplexity | entropy / log2(size) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in report["per_level"]:
        lines.append(
            f"| {lv['level']} | {lv['size']} | {lv['used']} | {100 * lv['utilisation']:.1f}% | "
            f"{lv['entropy_bits']:.2f} | {lv['perplexity']:.1f} | {lv['normalised_entropy']:.3f} |"
        )
    if report.get("build_log"):
        first, *tried = report["build_log"]
        lines += ["", f"Build log: trained {first['trained_levels']} levels in {first['train_s']:.1f} s, kept the "
                  "shortest prefix meeting the collision target:", ""]
        lines += [f"- {b['levels']} levels: {100 * b['collision_rate']:.2f}% learned-code collisions" for b in tried]
    extra = {key: v for key, v in report.items() if key in ("dataset", "backbone", "backbone_key", "encode_s")}
    if extra:
        lines += ["", *[f"- {key}: {v}" for key, v in extra.items()]]
    return "\n".join(lines) + "\n"
