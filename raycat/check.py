"""`raycat check DATA`: the layout, the class counts per split, and every unreadable file."""

from __future__ import annotations

from raycat.config import CheckConfig
from raycat.edge.layout import DatasetLayout, scan_layout


def format_report(layout: DatasetLayout, good: dict[str, list[int]], skipped: list[tuple[str, str]]) -> str:
    """A table of classes x splits (readable images), then the unreadable files with reasons."""
    splits = [s for s in ("train", "valid") if s in good]
    width = max(len("class"), *(len(c) for c in layout.classes))
    lines = [f"{layout.root}: {len(layout.classes)} classes",
             f"{'class':<{width}}  " + "  ".join(f"{s:>7}" for s in splits)]
    for i, c in enumerate(layout.classes):
        lines.append(f"{c:<{width}}  " + "  ".join(f"{good[s][i]:>7}" for s in splits))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{sum(good[s]):>7}" for s in splits))
    if len(layout.test):
        lines.append(f"test (unlabelled): {good.get('test', [len(layout.test)])[0]}")
    if layout.bad:
        lines.append(f"{len(layout.bad)} folder(s) or labels-file row(s) could not be used, skipped:")
        lines += [f"  {path}: {reason}" for path, reason in layout.bad]
    if skipped:
        lines.append(f"{len(skipped)} unreadable file(s), skipped:")
        lines += [f"  {path}: {reason}" for path, reason in skipped]
    else:
        lines.append("no unreadable files")
    return "\n".join(lines)


def run_check(cfg: CheckConfig) -> int:
    layout = scan_layout(cfg.data, cfg.labels, cfg.valid_pct, cfg.seed)  # LayoutError -> exit 2 before Ray
    from raycat.shell import pipeline, ray_session

    ray_session.connect(cfg.address, cfg.verbose)
    good: dict[str, list[int]] = {}
    skipped: list[tuple[str, str]] = []
    for name in ("train", "valid", "test"):
        split = getattr(layout, name)
        if not len(split):
            continue
        found = pipeline.check_files(split.paths, split.labels, cfg.size)
        skipped += found
        bad = {p for p, _ in found}
        counts = [0] * (len(layout.classes) if name != "test" else 1)
        for p, y in zip(split.paths, split.labels, strict=True):
            if p not in bad:
                counts[max(y, 0)] += 1
        good[name] = counts
    print(format_report(layout, good, sorted(skipped)))
    return 0
