"""Figures: the heatmap shows the right numbers in the right cells, trained pairs are marked, files are PNGs."""

from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pytest
from PIL import Image

from bindspace.evaluation.plots import figure_to_array, group_comparison_figure, retrieval_heatmap, save_figure

MODALITIES = ["image", "text", "audio", "imu"]
TRAINED = {frozenset(("image", "text")), frozenset(("image", "audio"))}


@pytest.fixture
def table() -> dict:
    """Every ordered pair but imu->audio, with a distinct R@1 per pair: 10*i + j + 1."""
    table = {}
    for (i, q), (j, g) in itertools.permutations(enumerate(MODALITIES), 2):
        if (q, g) != ("imu", "audio"):
            table[f"{q}->{g}"] = {"R@1": 10.0 * i + j + 1, "mAP": 50.0, "trained": frozenset((q, g)) in TRAINED}
    return table


def heatmap_values(fig) -> np.ndarray:
    return np.ma.filled(fig.axes[0].images[0].get_array().astype(float), np.nan)


def test_heatmap_cells_hold_the_metric_with_a_blank_diagonal(table):
    table["text->text"] = {"R@1": 99.0, "mAP": 99.0, "trained": False}  # a self pair stays blank anyway
    values = heatmap_values(retrieval_heatmap(table))
    assert values.shape == (4, 4)
    for i, j in itertools.product(range(4), repeat=2):
        pair = f"{MODALITIES[i]}->{MODALITIES[j]}"
        if i == j or pair == "imu->audio":
            assert np.isnan(values[i, j]), pair
        else:
            assert values[i, j] == table[pair]["R@1"], pair


def test_heatmap_marks_exactly_the_trained_cells(table):
    ax = retrieval_heatmap(table).axes[0]
    boxes = [p for p in ax.patches if p.get_gid() == "trained-cell"]
    # a box's lower-left corner is (col - 0.45, row - 0.45): recover each boxed (query, gallery) cell
    boxed = {(MODALITIES[round(b.get_y() + 0.45)], MODALITIES[round(b.get_x() + 0.45)]) for b in boxes}
    expected = {tuple(pair.split("->")) for pair, entry in table.items() if entry["trained"]}
    assert len(boxes) == len(expected) == 4 and boxed == expected
    weights = {t.get_text(): t.get_fontweight() for t in ax.texts}
    assert weights["2.0"] == "bold"  # image->text, trained
    assert weights["24.0"] == "normal"  # text->imu, emergent
    assert weights["n/a"] == "normal"  # the missing imu->audio


def test_heatmap_follows_the_given_order_and_checks_the_metric(table):
    fig = retrieval_heatmap(table, modalities=["audio", "image"], chance=5.0, title="anchors")
    values = heatmap_values(fig)
    assert values[0, 1] == table["audio->image"]["R@1"] and values[1, 0] == table["image->audio"]["R@1"]
    assert fig.axes[0].get_title() == "anchors"
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["audio", "image"]
    assert any("chance = 5.00" in t.get_text() for t in fig.legends[0].get_texts())
    with pytest.raises(ValueError, match="R@5"):
        retrieval_heatmap(table, metric="R@5")


def test_save_figure_writes_a_png_atomically_and_closes_pyplot_figures(table, tmp_path):
    path = save_figure(retrieval_heatmap(table), tmp_path / "sub" / "heatmap.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.width > 200 and png.height > 200
        assert np.asarray(png.convert("L")).std() > 10  # drawn content, not a blank canvas
    assert [p.name for p in path.parent.iterdir()] == ["heatmap.png"]  # no temporary left behind

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    save_figure(fig, tmp_path / "pyplot.png")
    assert fig.number not in plt.get_fignums()


def test_figure_to_array_is_rgb_uint8_of_the_canvas_size(table):
    fig = retrieval_heatmap(table)
    array = figure_to_array(fig)
    width, height = fig.canvas.get_width_height()
    assert array.shape == (height, width, 3) and array.dtype == np.uint8
    assert len(np.unique(array.reshape(-1, 3), axis=0)) > 50  # colours of a drawn heatmap


def test_figure_to_array_renders_figures_without_an_agg_canvas():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1), dpi=50)  # a bare FigureCanvasBase: no buffer to read
    fig.patch.set_facecolor((1.0, 0.0, 0.0))
    array = figure_to_array(fig)
    assert array.shape == (50, 100, 3)
    assert (array == [255, 0, 0]).all()


def test_group_comparison_bars_and_stage_curves():
    stats = {
        "anchor=image": {"trained": (37.0, 2.0), "emergent": (13.0, None)},
        "anchor=text": {"trained": (48.0, 4.0)},
    }
    curves = {"anchor=image": [(100.0, 32.0, 8.0), (200.0, 37.0, 13.0)]}
    fig = group_comparison_figure(stats, "R@1", curves)
    bars, lines = fig.axes[0], fig.axes[1]
    heights = [p.get_height() for p in bars.patches]
    assert heights[:2] == [37.0, 48.0]  # trained bars
    assert heights[2] == 13.0 and np.isnan(heights[3])  # emergent bars; the text group has none
    assert [list(line.get_ydata()) for line in lines.lines] == [[32.0, 37.0], [8.0, 13.0]]
    assert len(group_comparison_figure(stats).axes) == 1  # no curves, no second panel


def cell_colour(fig, row: int, col: int) -> np.ndarray:
    image = fig.axes[0].images[0]
    return np.asarray(image.cmap(image.norm(image.get_array()[row, col]))[:3])


def test_heatmap_scale_separates_three_times_chance_from_chance():
    # A 1000-item gallery: chance R@1 = 0.1%. One emergent pair at chance, one at 3x, trained pairs high.
    table = {
        "image->text": {"R@1": 40.0, "trained": True},
        "text->image": {"R@1": 38.0, "trained": True},
        "image->audio": {"R@1": 0.1, "trained": False},
        "audio->image": {"R@1": 0.3, "trained": False},
    }
    fig = retrieval_heatmap(table, chance=0.1, split="test")
    at_chance, at_three = cell_colour(fig, 0, 2), cell_colour(fig, 2, 0)  # image->audio, audio->image
    assert np.linalg.norm(at_three - at_chance) > 0.1  # visibly different (a 0-100 scale: < 0.01)
    assert np.linalg.norm(cell_colour(fig, 0, 1) - at_three) > 0.3  # and the trained pair far above both
    assert fig.axes[0].get_title().endswith("[test split]")
    labels = [t.get_text() for t in fig.axes[-1].get_yticklabels()]
    assert "0.1 (1x)" in labels and "0.3 (3x)" in labels and "100 (1000x)" in labels
    assert any("chance = 0.10" in t.get_text() for t in fig.legends[0].get_texts())
    with pytest.raises(ValueError, match="chance must be positive"):
        retrieval_heatmap(table, chance=0.0)


def test_heatmap_without_chance_still_separates_small_values(table):
    table["image->text"]["R@1"], table["text->image"]["R@1"] = 0.2, 0.6
    fig = retrieval_heatmap(table)
    assert np.linalg.norm(cell_colour(fig, 0, 1) - cell_colour(fig, 1, 0)) > 0.05
    assert "split" not in fig.axes[0].get_title()  # no split given, none claimed
