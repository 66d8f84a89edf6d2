"""stats.py: bootstrap intervals, paired comparisons, Wilcoxon and Holm against hand-computable cases, and
evaluate.py --summarize's summary.json / summary.csv / summary.png. Run: `python -m pytest tests/test_stats.py -q`."""
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

import evaluate
import stats

SEED_STATS = Path(__file__).resolve().parents[1] / "reference" / "published-stats"
LABELS = ("background", "shirt", "hat")


def column(iou: np.ndarray, present: np.ndarray, files=None) -> dict:
    """Per-image statistics as evaluate.read_stats_csv gives them, for (N, 3) IoU scores and presence."""
    n = len(iou)
    true = np.where(present, 10.0, 0.0)
    inter = np.where(present, 8.0, 0.0)
    return {"labels": LABELS, "files": tuple(files or (f"img{i:04d}.png" for i in range(n))),
            "iou score": np.asarray(iou, dtype=np.float64), "true mass": true, "intersection": inter,
            "union": true + 1.0, "pixel accuracy": np.asarray(iou)[:, 0].copy(),
            "model pixel accuracy": np.asarray(iou)[:, 1].copy()}


def random_column(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    present = np.column_stack([np.ones(n, bool), rng.random(n) < 0.7, rng.random(n) < 0.2])
    return column(rng.beta(5, 2, size=(n, 3)), present)


# ---- the bootstrap ----------------------------------------------------------------------------------

def test_weighted_medians_are_the_medians_of_the_resampled_images():
    rng = np.random.default_rng(1)
    values = rng.random((15, 3))
    present = rng.random((15, 3)) < 0.6
    counts = stats.resample_counts(15, resamples=50, seed=3)
    assert counts.shape == (50, 15) and (counts.sum(1) == 15).all()
    medians = stats.weighted_medians(values, present, counts)
    for r in range(50):
        for k in range(3):
            drawn = np.repeat(values[:, k], counts[r] * present[:, k])         # the resample, written out
            assert (np.isnan(medians[r, k]) and drawn.size == 0) or medians[r, k] == np.median(drawn)
    ones = stats.weighted_medians(values, present, np.ones((1, 15), int))[0]
    assert ones.tolist() == [np.median(values[present[:, k], k]) for k in range(3)]        # bit for bit


def test_intervals_contain_the_point_figure_and_narrow_as_images_are_added():
    widths = []
    for n in (40, 400):
        labels, figures = stats.column_summary(random_column(n, seed=n))
        for entry in [*labels.values(), figures["pixel accuracy"], figures["mIoU"]]:
            key = "median" if "median" in entry else "value"
            assert entry["ci_low"] <= entry[key] <= entry["ci_high"]
        widths.append([labels[name]["ci_high"] - labels[name]["ci_low"] for name in LABELS])
    assert all(wide > 2 * narrow for wide, narrow in zip(*widths))          # ~ 1 / sqrt(n): 10x the images


def test_the_same_seed_gives_the_same_numbers_and_a_label_in_one_image_gets_no_interval():
    data = random_column(30, seed=2)
    data["true mass"][:, 2] = 0
    data["true mass"][7, 2] = 10.0                                            # hat in one image only
    first, again = (stats.summarize({"a": data}) for _ in range(2))
    assert json.dumps(stats.json_ready(first)) == json.dumps(stats.json_ready(again))
    hat = first["labels"]["hat"]["a"]
    assert hat["n"] == 1 and hat["median"] == data["iou score"][7, 2] and np.isnan(hat["ci_low"])
    assert stats.json_ready(hat)["ci_low"] is None
    table = stats.interval_table(first, [("hat", "", "1")])
    assert f"| hat |  | 1 | {data['iou score'][7, 2]:.3f} (n = 1: no interval) |" in table


# ---- paired comparisons -----------------------------------------------------------------------------

def test_identical_columns_differ_by_zero_with_p_one():
    data = random_column(60, seed=4)
    summary = stats.summarize({"a": data, "b": data})
    for name in LABELS:
        entry = summary["paired"]["b"][name]
        assert entry["diff"] == entry["ci_low"] == entry["ci_high"] == 0.0
        assert entry["p"] == entry["p_holm"] == 1.0 and entry["significant"] is False
    assert summary["paired_summary"]["b"]["mIoU"]["diff"] == 0.0


def test_the_paired_interval_of_a_constant_shift_is_that_shift():
    a = random_column(80, seed=5)
    b = dict(a, **{"iou score": a["iou score"] + 0.125})
    shirt = stats.summarize({"a": a, "b": b})["paired"]["b"]["shirt"]
    assert shirt["diff"] == pytest.approx(0.125) and shirt["ci_low"] == pytest.approx(0.125)
    assert shirt["ci_high"] == pytest.approx(0.125)
    assert shirt["significant"] and shirt["p"] < 1e-9                       # every pair moved the same way


def test_the_wilcoxon_p_value_is_scipys_on_the_same_pairs():
    a = random_column(50, seed=6)
    rng = np.random.default_rng(7)
    b = dict(a, **{"iou score": a["iou score"] + rng.normal(0.02, 0.05, size=a["iou score"].shape)})
    order = rng.permutation(50)                                               # paired by file, not by row
    b = {k: (v[order] if isinstance(v, np.ndarray) else tuple(v[i] for i in order) if k == "files" else v)
         for k, v in b.items()}
    paired = stats.summarize({"a": a, "b": b})["paired"]["b"]
    for j, name in enumerate(LABELS):
        rows = a["true mass"][:, j] > 0
        expected = wilcoxon(b["iou score"][np.argsort(order)][rows, j], a["iou score"][rows, j]).pvalue
        assert paired[name]["p"] == pytest.approx(expected, rel=1e-12) and paired[name]["n"] == rows.sum()
    assert stats.wilcoxon_p(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.2, 0.1, 0.5, 0.7])) == \
        pytest.approx(wilcoxon([0.2, 0.1, 0.5, 0.7], [0.1, 0.2, 0.3, 0.4]).pvalue)


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> 0.06 (never below the last)
    adjusted = stats.holm(np.array([0.01, 0.04, 0.03, 0.005, np.nan]))
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and np.isnan(adjusted[4])
    assert stats.holm(np.array([0.5, 0.9])).tolist() == [1.0, 1.0]          # capped at 1


def test_columns_pair_by_file_name_and_refuse_what_cannot_pair():
    a, b = random_column(10, seed=8), random_column(10, seed=9)
    b["files"] = a["files"][5:] + tuple(f"other{i}.png" for i in range(5))
    assert stats.summarize({"a": a, "b": b})["paired_summary"]["b"]["pixel accuracy"]["n"] == 5
    with pytest.raises(ValueError, match="b: a file is named in two rows"):
        stats.summarize({"a": a, "b": dict(b, files=("x.png",) * 10)})
    with pytest.raises(ValueError, match="b and a hold no image in common"):
        stats.summarize({"a": a, "b": dict(b, files=tuple(f"y{i}" for i in range(10)))})
    with pytest.raises(ValueError, match="compare columns of one label set"):
        stats.summarize({"a": a, "b": dict(b, labels=("background", "shirt", "cap"))})


# ---- the files --------------------------------------------------------------------------------------

def write_csv(path: Path, data: dict) -> None:
    rows = [evaluate.csv_header(LABELS)]
    for i, name in enumerate(data["files"]):
        image = {"intersection": data["intersection"][i], "union": data["union"][i],
                 "predicted mass": data["true mass"][i], "true mass": data["true mass"][i],
                 "iou score": data["iou score"][i], "pixel accuracy": data["pixel accuracy"][i],
                 "model pixel accuracy": data["model pixel accuracy"][i]}
        rows.append(evaluate.csv_row(name, image))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_summarize_writes_summary_json_csv_and_png(tmp_path):
    a = random_column(40, seed=10)
    write_csv(tmp_path / "first.csv", a)
    write_csv(tmp_path / "second.csv", dict(a, **{"iou score": np.clip(a["iou score"] - 0.1, 0, 1)}))
    out = tmp_path / "out"
    evaluate.main(["--summarize", str(tmp_path / "first.csv"), str(tmp_path / "second.csv"), "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"columns", "labels", "paired", "resamples", "seed",          # the issue's
                            "summary", "paired_summary", "confidence", "alpha"}          # and the figures'
    assert summary["columns"] == ["first", "second"] and summary["resamples"] == 2000 and summary["seed"] == 0
    assert set(summary["labels"]) == set(LABELS) and set(summary["labels"]["shirt"]) == {"first", "second"}
    assert set(summary["labels"]["shirt"]["first"]) == {"median", "ci_low", "ci_high", "n"}
    assert set(summary["paired"]) == {"second"} and set(summary["paired"]["second"]) == set(LABELS)
    assert set(summary["paired"]["second"]["shirt"]) == {"diff", "ci_low", "ci_high", "p", "p_holm",
                                                         "significant", "n"}
    assert summary["paired"]["second"]["shirt"]["significant"] is True
    assert set(summary["summary"]) == set(stats.SUMMARY) == set(summary["paired_summary"]["second"])
    assert set(summary["summary"]["mIoU"]["first"]) == {"value", "ci_low", "ci_high", "n"}
    table = evaluate.label_table(evaluate.read_stats_csv(tmp_path / "first.csv"))
    assert summary["labels"]["shirt"]["first"]["median"] == table["median iou"][1]           # the table's figure
    assert summary["summary"]["pixel accuracy"]["first"]["value"] == table["pixel accuracy"]
    rows = list(csv.reader(open(out / "summary.csv")))
    assert rows[0][:5] == ["label", "first", "first ci_low", "first ci_high", "first n"]
    assert [r[0] for r in rows[1:]] == [*LABELS, *stats.SUMMARY]
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "table.md").read_text()
    assert markdown.startswith("| label | proportion | frequency | first | second | second − first | p (Holm) |")
    shirt = [line for line in markdown.splitlines() if line.startswith("| shirt | ")]
    assert re.fullmatch(r"\| shirt \| [\d.]+ \| \d+ \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \| .*", shirt[0])
    assert len(shirt) == 2   # the label table, with its intervals, once; TopFormer's per-image table


def test_the_published_columns_keep_their_figures_and_gain_intervals(capsys):
    evaluate.main(["--summarize", str(SEED_STATS / "512_96.csv"), str(SEED_STATS / "512_96_pp.csv")])
    out = capsys.readouterr().out
    interval_rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in out.splitlines()
                     if line.startswith("| ")}
    assert interval_rows["skin"][3].startswith("0.935 [") and interval_rows["skin"][4].startswith("0.936 [")
    assert interval_rows["leggings"][5].endswith(" *")                      # published pp helps leggings
    assert interval_rows["eyeglass"][5].endswith("]")                        # 17 images: no sure difference
    assert interval_rows["mIoU"][3].startswith("0.575 [")
    assert interval_rows["leggings"][1:3] == ["0.1015", "35"]
    assert interval_rows["leggings"][3].startswith("0.763 [") and interval_rows["leggings"][4].startswith("0.895 [")
