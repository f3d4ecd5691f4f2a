"""The summary stage: miou.csv rows stacked into summary.csv, the markdown page beside the published
numbers, the figure, and refusal of bad inputs (file named, nothing written)."""

import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from segformer.metrics import cityscapes_class_names, miou_csv_text, miou_row
from segformer.summary import PUBLISHED, SummaryInputError, read_miou_rows, summary_markdown

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "workflow_scripts/summarize.py"
NAN_CLASS = "wall"  # one class left undefined (0/0) in every made-up result


def made_up_row(variant: str, seed: int) -> dict:
    """A miou.csv row from random metrics with full-precision floats and one NaN class."""
    rng = np.random.default_rng(seed)
    iou = rng.uniform(0.0, 1.0, 19)
    iou[cityscapes_class_names().index(NAN_CLASS)] = np.nan
    metrics = {"IoU": iou, "mIoU": float(np.nanmean(iou)), "aAcc": rng.uniform(), "mAcc": rng.uniform()}
    return miou_row(variant, metrics)


def write_miou(results: Path, variant: str, seed: int) -> tuple[Path, dict]:
    path = results / variant / "miou.csv"
    path.parent.mkdir(parents=True)
    row = made_up_row(variant, seed)
    path.write_text(miou_csv_text([row]))
    return path, row


@pytest.fixture
def three_variants(tmp_path):
    """b2, b0, b5 (given out of order): the paths and the rows written."""
    written = [write_miou(tmp_path / "results", v, seed) for seed, v in enumerate(["b2", "b0", "b5"])]
    return [p for p, _ in written], {row["variant"]: row for _, row in written}


def outputs(tmp_path):
    out = tmp_path / "out"
    return {"csv": out / "summary.csv", "md": out / "summary.md", "png": out / "summary.png"}


def summarize(paths, out, *flags, evaluation="whole image, single scale"):
    command = [sys.executable, str(SCRIPT), "--miou", *map(str, paths), "--out_csv", str(out["csv"]),
               "--out_md", str(out["md"]), "--out_png", str(out["png"]), "--evaluation", evaluation, *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)


def markdown_table(page: str, first_column: str) -> dict:
    """The page's pipe table whose header starts with ``first_column``: {first cell: {column: cell}}."""
    lines = page.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |")]
    assert len(starts) == 1, page
    split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]
    header = split(lines[starts[0]])
    table = {}
    for line in lines[starts[0] + 2:]:
        if not line.startswith("|"):
            break
        cells = split(line)
        table[cells[0]] = dict(zip(header, cells))
    return table


def pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}"


def test_summary_outputs_demo_multi_scale(tmp_path, three_variants):
    paths, rows = three_variants
    out = outputs(tmp_path)
    result = summarize(paths, out, "--demo", "--multi_scale", evaluation="slide 1024x1024 stride 768, multi scale")
    assert result.returncode == 0, result.stdout + result.stderr

    # summary.csv is the rows stacked in b0..b5 order, written exactly as miou_csv_text writes them.
    expected = miou_csv_text([rows[v] for v in ("b0", "b2", "b5")])
    assert out["csv"].read_text() == expected
    lines = out["csv"].read_text().splitlines()
    for line, variant in zip(lines[1:], ("b0", "b2", "b5")):  # and the floats parse back bit for bit
        values = [float(x) for x in line.split(",")[1:]]
        original = [rows[variant][k] for k in lines[0].split(",")[1:]]
        assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(values, original))

    page = out["md"].read_text()
    assert "slide 1024x1024 stride 768, multi scale" in page
    assert "Synthetic demo data" in page and "not comparable" in page
    assert page.index("Synthetic demo data") < page.index("| variant ")  # said above the table
    table = markdown_table(page, "variant")
    assert list(table) == ["b0", "b2", "b5"]
    for variant, row in rows.items():
        cells, published = table[variant], PUBLISHED[variant]
        assert cells["mIoU %"] == pct(row["mIoU"])
        assert cells["aAcc %"] == pct(row["aAcc"])
        assert cells["mAcc %"] == pct(row["mAcc"])
        assert cells["paper single-scale"] == f"{published['paper_single_scale']:.1f}"
        assert cells["paper multi-scale"] == f"{published['paper_multi_scale']:.1f}"
        assert cells["mmsegmentation"] == f"{published['mmsegmentation']:.2f}"
        assert cells["model zoo"] == f"{published['model_zoo']:.2f}"
        # --multi_scale: the difference is taken to the paper's multi-scale column.
        assert cells["Δ vs paper multi-scale"] == f"{100 * row['mIoU'] - published['paper_multi_scale']:+.2f}"
    # the published numbers as the sources print them (b0 and b5 spelled out)
    assert [table["b0"][c] for c in ("paper single-scale", "paper multi-scale", "mmsegmentation", "model zoo")] \
        == ["76.2", "78.1", "76.54", "71.54"]
    assert [table["b5"][c] for c in ("paper single-scale", "paper multi-scale", "mmsegmentation", "model zoo")] \
        == ["82.4", "84.0", "82.25", "79.90"]
    classes = markdown_table(page, "class")  # per-class IoU: classes as rows, variants as columns
    assert list(classes) == cityscapes_class_names()
    for variant, row in rows.items():
        assert classes["road"][variant] == pct(row["road"])
        assert classes["bicycle"][variant] == pct(row["bicycle"])
        assert classes[NAN_CLASS][variant] == "n/a"
    # variants not summarised bring no published numbers (b1's mmseg 78.56, b3's zoo 78.97)
    assert "78.56" not in page and "78.97" not in page

    image = cv2.imread(str(out["png"]))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 500
    assert out["png"].stat().st_size > 10_000
    assert sorted(p.name for p in out["csv"].parent.iterdir()) == ["summary.csv", "summary.md", "summary.png"]


def test_summary_page_single_scale_without_demo(tmp_path, three_variants):
    paths, rows = three_variants
    out = outputs(tmp_path)
    result = summarize(paths[:2], out)  # b2 and b0 only
    assert result.returncode == 0, result.stdout + result.stderr
    page = out["md"].read_text()
    assert "Synthetic demo data" not in page and "not comparable" not in page
    table = markdown_table(page, "variant")
    assert list(table) == ["b0", "b2"]
    for variant in table:
        expected = 100 * rows[variant]["mIoU"] - PUBLISHED[variant]["paper_single_scale"]
        assert table[variant]["Δ vs paper single-scale"] == f"{expected:+.2f}"
        assert "Δ vs paper multi-scale" not in table[variant]
    assert out["csv"].read_text() == miou_csv_text([rows["b0"], rows["b2"]])
    assert cv2.imread(str(out["png"])) is not None


def test_markdown_flags_in_library(three_variants):
    paths, _ = three_variants
    frame = read_miou_rows(paths)
    single = summary_markdown(frame, evaluation="e", notes={"training": "12 iterations only"})
    multi = summary_markdown(frame, evaluation="e", multi_scale=True, demo=True)
    assert "Δ vs paper single-scale" in single and "Δ vs paper multi-scale" not in single
    assert "Δ vs paper multi-scale" in multi and "Δ vs paper single-scale" not in multi
    assert "- **training**: 12 iterations only" in single and "## Notes" not in multi
    assert "Synthetic demo data" in multi and "Synthetic demo data" not in single


def break_wrong_header(path):
    path.write_text(path.read_text().replace("traffic light", "traffic_light", 1))


def break_empty(path):
    path.write_text("")


def break_missing(path):
    path.unlink()


BREAKERS = {"wrong header": (break_wrong_header, "header"), "empty file": (break_empty, "empty"),
            "missing file": (break_missing, "cannot read")}


@pytest.mark.parametrize("case", sorted(BREAKERS))
def test_bad_input_names_file_and_writes_nothing(tmp_path, three_variants, case):
    paths, _ = three_variants
    breaker, what = BREAKERS[case]
    breaker(paths[1])
    out = outputs(tmp_path)
    result = summarize(paths, out)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and str(paths[1]) in result.stderr and what in result.stderr
    assert not out["csv"].parent.exists()  # not even the folder: nothing looks finished


def test_duplicate_variant_is_refused(tmp_path, three_variants):
    paths, _ = three_variants
    copy = tmp_path / "results" / "b0_again" / "miou.csv"
    copy.parent.mkdir()
    copy.write_text(paths[1].read_text())  # a second b0
    out = outputs(tmp_path)
    result = summarize([*paths, copy], out)
    assert result.returncode == 1
    assert str(copy) in result.stderr and "'b0'" in result.stderr and str(paths[1]) in result.stderr
    assert not out["csv"].parent.exists()


@pytest.mark.parametrize("case, text, what", [
    ("header only", lambda row: miou_csv_text([]), "0 data rows"),
    ("two rows", lambda row: miou_csv_text([row, row]), "2 data rows"),
    ("percent values", lambda row: miou_csv_text([{**row, "mIoU": 58.7}]), "outside the fraction range"),
    ("unknown variant", lambda row: miou_csv_text([{**row, "variant": "b7"}]), "not one of"),
    ("short row", lambda row: miou_csv_text([row]).rsplit(",", 1)[0] + "\n", "fields"),
])
def test_reader_rejects_malformed_files(tmp_path, case, text, what):
    path = tmp_path / "b0" / "miou.csv"
    path.parent.mkdir()
    path.write_text(text(made_up_row("b0", 0)))
    with pytest.raises(SummaryInputError) as error:
        read_miou_rows([path])
    assert str(error.value).startswith(f"{path}: ") and what in str(error.value)


def test_reader_round_trips_and_sorts(three_variants):
    paths, rows = three_variants
    frame = read_miou_rows(paths)
    assert list(frame["variant"]) == ["b0", "b2", "b5"]
    for _, got in frame.iterrows():
        want = rows[got["variant"]]
        for key, value in want.items():
            if key == "variant":
                continue
            assert (math.isnan(value) and math.isnan(got[key])) or got[key] == value, (key, got[key], value)
