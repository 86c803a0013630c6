"""The images worth a look, as the lesson looks at them (fast.ai's `plot_top_losses`): a PNG grid
and the CSV behind it. `raycat predict` writes them for what it scored, `raycat train` for its valid
set; the rows come from core.metrics.worth_a_look, named by metrics.name_rows."""

from __future__ import annotations

from raycat.edge import outputs, storage

# file stem -> (what the grid shows, how each image is titled, the CSV's columns)
GRIDS = {
    "top_losses": ("the most confidently wrong (highest loss)", "prediction / actual, loss / probability",
                   ["loss", "path", "actual", "predicted", "probability"]),
    "most_uncertain": ("the least confident predictions (labelled images)", "prediction / actual, confidence",
                       ["confidence", "path", "actual", "predicted"]),
    "least_confident": ("the least confident predictions", "prediction, confidence",
                        ["confidence", "path", "actual", "predicted"]),
}
FILES = [f"{g}.{ext}" for g in GRIDS for ext in ("png", "csv")]


def write(out: str, name: str, card, rows: list) -> bytes | None:
    """OUT/NAME.csv (the rows behind the grid) and OUT/NAME.png (the images, titled as fast.ai's
    plot_top_losses), whose bytes it returns (None without rows). Thumbnails are read back from the
    images' own paths, at least 96 px."""
    from raycat.edge import plots

    what, heading, columns = GRIDS[name]
    outputs.write_csv(storage.join(out, f"{name}.csv"), columns, rows)
    if not rows:
        return None
    images, titles = [], []
    for r in rows:
        record = dict(zip(columns, r, strict=True))
        try:
            images.append(thumbnail(record["path"], max(96, card.size)))
        except Exception:  # noqa: BLE001 - a file gone since it was scored: no thumbnail, the CSV still lists it
            continue
        if name == "top_losses":
            titles.append(f"{record['predicted']} / {record['actual']}\n"
                          f"{record['loss']:.2f} / {record['probability']:.2f}")
        else:
            actual = f" / {record['actual']}" if record.get("actual") else ""
            titles.append(f"{record['predicted']}{actual}\n{record['confidence']:.2f}")
    png = plots.image_grid_png(images, titles, f"{what}: {heading}")
    storage.write_bytes(storage.join(out, f"{name}.png"), png)
    return png


def thumbnail(path: str, size: int):
    from raycat.core.decode import load_image

    return load_image(storage.read_bytes(path), size)
