"""The results table: every variant's ``miou.csv`` stacked into ``summary.csv``, a markdown page that
sets our numbers beside the published Cityscapes val mIoU, and a figure.

Rows are read and written with the column list of ``segformer.metrics.miou_csv_header`` and the
writer ``miou_csv_text``, so ``summary.csv`` is exactly the per-variant rows stacked (floats
round-trip bit for bit). Values in the frames are fractions; the page and the figure show percent.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np
import pandas as pd

from segformer.io import atomic_path
from segformer.metrics import miou_csv_header, miou_csv_text
from segformer.models.variants import VARIANTS as MODEL_VARIANTS

# Published Cityscapes val mIoU in percent, one place for the whole project.
#   paper_single_scale / paper_multi_scale: SegFormer paper, arXiv 2105.15203, Table 1(a)
#       (accuracy as a function of model size; MiT-B0..B5 with the all-MLP decoder, 1024x1024 crops).
#   mmsegmentation: open-mmlab/mmsegmentation configs/segformer/README.md (Cityscapes, 1024x1024, 160k).
#   model_zoo: MindSpore models zoo SegFormer README (mindspore-lab/models), a port with its own recipe.
PUBLISHED: Dict[str, Dict[str, float]] = {
    "b0": {"paper_single_scale": 76.2, "paper_multi_scale": 78.1, "mmsegmentation": 76.54, "model_zoo": 71.54},
    "b1": {"paper_single_scale": 78.5, "paper_multi_scale": 80.0, "mmsegmentation": 78.56, "model_zoo": 75.34},
    "b2": {"paper_single_scale": 81.0, "paper_multi_scale": 82.2, "mmsegmentation": 81.08, "model_zoo": 78.53},
    "b3": {"paper_single_scale": 81.7, "paper_multi_scale": 83.3, "mmsegmentation": 81.94, "model_zoo": 78.97},
    "b4": {"paper_single_scale": 82.3, "paper_multi_scale": 83.9, "mmsegmentation": 81.89, "model_zoo": 79.65},
    "b5": {"paper_single_scale": 82.4, "paper_multi_scale": 84.0, "mmsegmentation": 82.25, "model_zoo": 79.90},
}
VARIANTS = tuple(MODEL_VARIANTS)  # b0..b5 in the table's order; a variant without published numbers shows dashes
# The zoo's b0 has a second entry, trained and evaluated at 512x1024 (same README).
MODEL_ZOO_B0_512x1024 = 70.88

PUBLISHED_SOURCES = {
    "paper": "SegFormer paper, arXiv 2105.15203, Table 1(a)",
    "mmsegmentation": "open-mmlab/mmsegmentation, configs/segformer/README.md",
    "model zoo": "MindSpore models zoo, SegFormer README",
}

DEMO_DISCLAIMER = (
    "**Synthetic demo data.** Our numbers below come from the generated demo dataset, not from "
    "Cityscapes val: the published Cityscapes numbers beside them are not comparable."
)


class SummaryInputError(ValueError):
    """A ``miou.csv`` that cannot go into the summary; the message starts with the file's path."""


def read_miou_rows(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Stack one-row ``miou.csv`` files into a frame (columns = ``miou_csv_header()``), sorted b0..b5.

    Each file must hold exactly the header and one row of fractions in [0, 1] (or ``nan``) for a
    known variant; no two files may hold the same variant. Any breach raises SummaryInputError
    naming the file. The variant column is trusted over the folder name.
    """
    rows: List[Dict[str, object]] = []
    seen: Dict[str, Path] = {}
    for path in map(Path, paths):
        row = _read_one_row(path)
        variant = row["variant"]
        if variant in seen:
            raise SummaryInputError(f"{path}: variant {variant!r} already read from {seen[variant]}")
        seen[variant] = path
        rows.append(row)
    if not rows:
        raise SummaryInputError("no miou.csv files given")
    rows.sort(key=lambda r: VARIANTS.index(r["variant"]))
    return pd.DataFrame(rows, columns=miou_csv_header())


def _read_one_row(path: Path) -> Dict[str, object]:
    header = miou_csv_header()
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            records = [r for r in csv.reader(handle) if r]  # blank lines carry nothing
    except (OSError, UnicodeDecodeError) as error:
        raise SummaryInputError(f"{path}: cannot read ({error})") from error
    if not records:
        raise SummaryInputError(f"{path}: empty file, expected a header and one row")
    if records[0] != header:
        raise SummaryInputError(f"{path}: header {','.join(records[0])!r} is not the miou.csv header "
                                f"{','.join(header)!r}")
    if len(records) != 2:
        raise SummaryInputError(f"{path}: {len(records) - 1} data rows, expected exactly one")
    values = records[1]
    if len(values) != len(header):
        raise SummaryInputError(f"{path}: the row has {len(values)} fields, the header {len(header)}")
    if values[0] not in VARIANTS:
        raise SummaryInputError(f"{path}: variant {values[0]!r} is not one of {', '.join(VARIANTS)}")
    row: Dict[str, object] = {"variant": values[0]}
    for column, text in zip(header[1:], values[1:]):
        row[column] = _fraction(path, column, text)
    return row


def _fraction(path: Path, column: str, text: str) -> float:
    """A value of the row: float() parses repr() output back exactly; percent would be out of range."""
    try:
        value = float(text)
    except ValueError:
        raise SummaryInputError(f"{path}: column {column!r} holds {text!r}, not a number") from None
    if not math.isnan(value) and not 0.0 <= value <= 1.0:
        raise SummaryInputError(f"{path}: column {column!r} holds {text}, outside the fraction range [0, 1]")
    return value


def _check_frame(frame: pd.DataFrame) -> None:
    if list(frame.columns) != miou_csv_header():
        raise ValueError(f"summary: frame columns {list(frame.columns)} are not the miou.csv header")


def _records(frame: pd.DataFrame) -> List[Dict[str, object]]:
    """Rows with plain Python floats (numpy scalars would print differently through repr)."""
    return [{key: (value if key == "variant" else float(value)) for key, value in row.items()}
            for row in frame.to_dict("records")]


def summary_csv_text(frame: pd.DataFrame) -> str:
    """``summary.csv``: the miou.csv header and the frame's rows, written by ``miou_csv_text``."""
    _check_frame(frame)
    return miou_csv_text(_records(frame))


def _percent(fraction: float) -> str:
    return "n/a" if math.isnan(fraction) else f"{100.0 * fraction:.2f}"


def _published(value: Optional[float], decimals: int) -> str:
    """A published number with the decimals its source gives (paper 1, the others 2)."""
    return "n/a" if value is None else f"{value:.{decimals}f}"


def _difference(fraction: float, reference: Optional[float]) -> str:
    if reference is None or math.isnan(fraction):
        return "n/a"
    return f"{100.0 * fraction - reference:+.2f}"


def _markdown_table(header: List[str], rows: List[List[str]]) -> str:
    """A pipe table; the first column left-aligned, the numbers right-aligned."""
    rule = ["---"] + ["--:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *rows])


def _miou_table(frame: pd.DataFrame, multi_scale: bool) -> str:
    compared = "paper_multi_scale" if multi_scale else "paper_single_scale"
    header = ["variant", "mIoU %", "aAcc %", "mAcc %", "paper single-scale", "paper multi-scale",
              "mmsegmentation", "model zoo",
              f"Δ vs paper {'multi' if multi_scale else 'single'}-scale"]
    rows = []
    for record in _records(frame):
        published = PUBLISHED.get(record["variant"], {})
        rows.append([
            record["variant"], _percent(record["mIoU"]), _percent(record["aAcc"]), _percent(record["mAcc"]),
            _published(published.get("paper_single_scale"), 1), _published(published.get("paper_multi_scale"), 1),
            _published(published.get("mmsegmentation"), 2), _published(published.get("model_zoo"), 2),
            _difference(record["mIoU"], published.get(compared)),
        ])
    return _markdown_table(header, rows)


def _class_table(frame: pd.DataFrame) -> str:
    records = _records(frame)
    class_names = miou_csv_header()[4:]
    header = ["class", *(r["variant"] for r in records)]
    rows = [[name, *(_percent(r[name]) for r in records)] for name in class_names]
    return _markdown_table(header, rows)


def summary_markdown(frame: pd.DataFrame, *, evaluation: str, multi_scale: bool = False, demo: bool = False,
                     notes: Optional[Mapping[str, str]] = None) -> str:
    """The results page: our mIoU / aAcc / mAcc beside the published Cityscapes val mIoU, then
    per-class IoU. ``evaluation`` says how ours was evaluated; ``multi_scale`` picks the paper column
    the difference is taken to; ``demo`` puts a plain not-comparable warning above the tables;
    ``notes`` (label -> text) become a bullet list at the end."""
    _check_frame(frame)
    scale = "multi-scale" if multi_scale else "single-scale"
    lines = [
        f"# SegFormer results: {'synthetic demo data' if demo else 'Cityscapes val'}",
        "",
        f"Ours evaluated: {evaluation}. Values in percent; n/a where undefined. "
        f"Δ is our mIoU minus the paper's {scale} number.",
        "",
    ]
    if demo:
        lines += [f"> {DEMO_DISCLAIMER}", ""]
    lines += ["## mIoU", "", _miou_table(frame, multi_scale), ""]
    if "b0" in set(frame["variant"]):
        lines += [f"The model zoo's b0 trained at 512x1024 reaches {MODEL_ZOO_B0_512x1024:.2f}.", ""]
    lines += ["## Per-class IoU %", "", _class_table(frame), ""]
    lines += ["## Sources of the published numbers", ""]
    lines += [f"- {label}: {source}" for label, source in PUBLISHED_SOURCES.items()]
    lines += ["- mmsegmentation and model zoo numbers are single-scale.", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- **{label}**: {text}" for label, text in notes.items()] + [""]
    return "\n".join(lines)


def plot_miou(frame: pd.DataFrame, out_png: str | os.PathLike, *, title: Optional[str] = None) -> None:
    """One figure, two panels: our mIoU per variant (bars) with the paper's single-scale numbers as
    markers, and a heatmap of per-class IoU (classes x variants). Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    _check_frame(frame)
    variants = list(frame["variant"])
    class_names = miou_csv_header()[4:]
    fig, (ax_miou, ax_class) = plt.subplots(
        1, 2, figsize=(6 + 1.2 * len(variants), 7), gridspec_kw={"width_ratios": [1, 1.3]})
    _plot_miou_bars(ax_miou, variants, 100.0 * frame["mIoU"].to_numpy(dtype=np.float64))
    image = _plot_class_heatmap(ax_class, variants, class_names,
                                100.0 * frame[class_names].to_numpy(dtype=np.float64).T)
    fig.colorbar(image, ax=ax_class, label="IoU %")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _plot_miou_bars(ax, variants: List[str], miou_percent: np.ndarray) -> None:
    x = np.arange(len(variants))
    bars = ax.bar(x, np.nan_to_num(miou_percent), color="tab:blue", label="ours")
    ax.bar_label(bars, labels=[_percent(v / 100.0) for v in miou_percent], padding=2, fontsize=8)
    paper = [PUBLISHED.get(v, {}).get("paper_single_scale", np.nan) for v in variants]
    ax.plot(x, paper, "D", color="tab:red", label="paper single-scale")
    ax.set_xticks(x, variants)
    ax.set_ylim(0, 100)
    ax.set_ylabel("mIoU %")
    ax.set_title("mIoU per variant")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncols=2, frameon=False)  # clear of the bars


def _plot_class_heatmap(ax, variants: List[str], class_names: List[str], iou_percent: np.ndarray):
    cmap = _colormap("viridis")
    cmap.set_bad("lightgray")  # undefined IoU (nan)
    image = ax.imshow(np.ma.masked_invalid(iou_percent), cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for row, col in np.ndindex(iou_percent.shape):
        value = iou_percent[row, col]
        text = "n/a" if math.isnan(value) else f"{value:.0f}"
        ax.text(col, row, text, ha="center", va="center", fontsize=7,
                color="black" if math.isnan(value) or value > 60 else "white")
    ax.set_xticks(range(len(variants)), variants)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_title("per-class IoU %")
    return image


def _colormap(name: str):
    """A private copy of a colormap (setting the nan colour on the shared one would leak)."""
    import matplotlib

    return matplotlib.colormaps[name].copy()
