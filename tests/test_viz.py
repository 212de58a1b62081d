"""facelib.viz: grids put each image where it belongs, plots draw what the data says."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from facelib.viz import embed_tsne, image_grid, plot_losses, plot_tsne, show_images, to_numpy_image


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_to_numpy_image_maps_range_and_moves_channels():
    image = torch.zeros(3, 2, 4)
    image[0] = -1.0  # red channel at the bottom of [-1, 1] -> 0
    image[1] = 1.0  # green at the top -> 1
    image[2, 0, 0] = 3.0  # out of range -> clipped to 1
    array = to_numpy_image(image)
    assert array.shape == (2, 4, 3) and array.dtype == np.float32
    assert np.all(array[..., 0] == 0.0) and np.all(array[..., 1] == 1.0)
    assert array[0, 0, 2] == 1.0 and array[1, 1, 2] == 0.5


def test_to_numpy_image_greyscale_and_unit_range():
    grey = np.full((2, 1, 3, 3), 0.25, dtype=np.float32)
    array = to_numpy_image(grey, value_range=(0.0, 1.0))
    assert array.shape == (2, 3, 3, 3)
    assert np.allclose(array, 0.25)


@pytest.mark.parametrize(
    "bad, error",
    [
        (torch.zeros(2, 3), ValueError),
        (torch.zeros(4, 8, 8), ValueError),
        ([[0.0]], TypeError),
    ],
)
def test_to_numpy_image_rejects_bad_input(bad, error):
    with pytest.raises(error, match="image"):
        to_numpy_image(bad)


def test_image_grid_places_each_image_row_major():
    batch, size, padding = 5, 4, 1
    # image i is a flat grey level, so every tile is identifiable in the grid
    levels = torch.linspace(-1, 1, batch)
    images = levels.view(batch, 1, 1, 1).expand(batch, 3, size, size)
    grid = image_grid(images, nrow=3, padding=padding, pad_value=1.0)
    assert grid.shape == (2 * (size + padding) + padding, 3 * (size + padding) + padding, 3)
    for index in range(batch):
        top = padding + (index // 3) * (size + padding)
        left = padding + (index % 3) * (size + padding)
        tile = grid[top : top + size, left : left + size]
        assert np.allclose(tile, (levels[index].item() + 1) / 2)
    # the unused sixth slot and the padding stay at pad_value
    assert np.all(grid[size + 2 * padding :, 2 * (size + padding) + padding :] == 1.0)
    assert np.all(grid[0] == 1.0)


def test_image_grid_needs_a_batch():
    with pytest.raises(ValueError, match="batch"):
        image_grid(torch.zeros(3, 4, 4))


def test_image_grid_title_space_sits_above_each_row():
    images = torch.full((4, 3, 4, 4), -1.0)  # black tiles on a white grid
    grid = image_grid(images, nrow=2, padding=1, title_space=3)
    assert grid.shape == (2 * (4 + 1 + 3) + 1, 2 * (4 + 1) + 1, 3)
    dark_rows = [row for row in range(grid.shape[0]) if grid[row].min() == 0.0]
    assert dark_rows == [4, 5, 6, 7, 12, 13, 14, 15]


def test_show_images_draws_grid_and_titles_in_the_white_band():
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    ax = show_images(images, nrow=2)
    assert np.allclose(ax.get_images()[0].get_array(), image_grid(images, nrow=2))
    ax = show_images(images, titles=["a", "b", "c"], nrow=2)
    grid = np.asarray(ax.get_images()[0].get_array())
    assert [text.get_text() for text in ax.texts] == ["a", "b", "c"]
    for text in ax.texts:
        x, y = text.get_position()
        assert np.all(grid[int(y)] == 1.0), "a title must sit on the white band, not on an image"
        assert grid[int(y) + 1, int(x)].max() < 1.0, "...and right above its own tile"
    with pytest.raises(ValueError, match="titles"):
        show_images(images, titles=["only one"])


def test_plot_losses_reads_trainer_log_and_skips_bookkeeping(tmp_path):
    # the shape of facelib.train.Trainer's out_dir/log.jsonl: kind, step, seconds, then the losses
    rows = [
        {"kind": "train", "step": step, "seconds": 0.1 * step, "lr": 1e-3, "total": 10.0 / (step + 1), "kl": 0.5}
        for step in range(10, 60, 10)
    ]
    rows.append({"kind": "val", "step": 50, "val_psnr": 20.0})  # a validation line without the training losses
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    for log in (tmp_path, tmp_path / "log.jsonl"):
        ax = plot_losses(log)
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"total", "kl", "val_psnr"}
        assert list(lines["total"].get_xdata()) == [10, 20, 30, 40, 50]
        assert np.allclose(lines["total"].get_ydata(), [10.0 / (s + 1) for s in range(10, 60, 10)])
        assert list(lines["val_psnr"].get_xdata()) == [50]


def test_plot_losses_smoothing_and_errors():
    frame = pd.DataFrame({"step": range(5), "loss": [0.0, 3.0, 0.0, 3.0, 0.0]})
    ax = plot_losses(frame, keys=["loss"], smooth=3)
    assert np.allclose(ax.get_lines()[0].get_ydata(), [1.5, 1.0, 2.0, 1.0, 1.5])
    with pytest.raises(ValueError, match="no column"):
        plot_losses(frame, keys=["missing"])
    with pytest.raises(TypeError, match="JSONL"):
        plot_losses(42)
    with pytest.raises(FileNotFoundError):
        plot_losses("no_such_log.jsonl")


def test_tsne_is_seeded_and_separates_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[8.0] * 6, [-8.0] * 6])
    labels = torch.arange(2).repeat_interleave(20)
    features = centres[labels] + torch.randn(40, 6, generator=generator)
    first = embed_tsne(features, perplexity=10, seed=0)
    assert first.shape == (40, 2)
    assert np.array_equal(first, embed_tsne(features, perplexity=10, seed=0))
    # each point's nearest neighbour in the embedding has its label
    distances = np.linalg.norm(first[:, None] - first[None], axis=-1) + np.eye(40) * 1e9
    assert np.all(labels.numpy()[distances.argmin(1)] == labels.numpy())


def test_plot_tsne_legend_uses_label_names():
    features = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    labels = np.array([0, 2] * 6)
    ax = plot_tsne(features, labels, label_names=["neutral", "angry", "happy"])
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["neutral", "happy"]
    assert sum(len(collection.get_offsets()) for collection in ax.collections) == 12
    with pytest.raises(ValueError, match="label_names"):
        plot_tsne(features, labels, label_names=["neutral"])
    with pytest.raises(ValueError, match="entries"):
        plot_tsne(features, labels[:5])


def _text_boxes(ax):
    """Rendered bounding boxes (display pixels) of every text drawn on ``ax``, by string."""
    renderer = ax.figure.canvas.get_renderer()
    return {text.get_text(): text.get_window_extent(renderer) for text in ax.texts}


def test_show_images_default_size_makes_small_faces_readable():
    plt.rcParams["figure.dpi"] = 80
    ax = show_images(torch.zeros(10, 3, 64, 64), nrow=10)
    renderer = ax.figure.canvas.get_renderer()
    tile_pixels = ax.get_images()[0].get_window_extent(renderer).width / 10
    assert tile_pixels >= 120, f"a 64x64 face is drawn {tile_pixels:.0f} px wide; it must be about 128"
    # big images are not blown up
    ax = show_images(torch.zeros(2, 3, 256, 256), nrow=2)
    assert ax.get_images()[0].get_window_extent(renderer).width == pytest.approx(2 * 256 + 3 * 2, abs=2)


def test_show_images_long_titles_are_whole_and_do_not_overlap():
    titles = [f"contemptuous id {i}" for i in (1, 5, 8, 12, 20, 31, 44, 57)] + ["disgusted", "surprised"]
    ax = show_images(torch.rand(10, 3, 64, 64) * 2 - 1, titles=titles, nrow=10)
    ax.figure.canvas.draw()
    boxes = _text_boxes(ax)
    assert sorted(text.replace("\n", " ") for text in boxes) == sorted(titles), "titles are never cut"
    ordered = sorted(boxes.values(), key=lambda box: box.x0)
    for left, right in zip(ordered, ordered[1:]):
        assert left.x1 <= right.x0 + 0.5, "neighbouring titles overlap"


def test_show_images_row_and_column_labels():
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    ax = show_images(images, nrow=3, row_labels=["source", "weight of S1"], column_labels=["t=0", "t=0.5", "t=1"])
    ax.figure.canvas.draw()
    boxes = _text_boxes(ax)
    image_box = ax.get_images()[0].get_window_extent(ax.figure.canvas.get_renderer())
    for label in ("source", "weight of S1"):
        assert boxes[label].x1 <= image_box.x0 + 0.5, "row labels sit left of the grid"
        assert boxes[label].x0 >= 0, "...and inside the figure"
    # the first row label is level with the first row (display y grows upward)
    assert boxes["source"].y0 > boxes["weight of S1"].y1
    for label in ("t=0", "t=0.5", "t=1"):
        assert boxes[label].y0 >= image_box.y1 - image_box.height / 2 and boxes[label].y0 > boxes["source"].y1
    assert boxes["t=0"].x1 < boxes["t=0.5"].x0 < boxes["t=1"].x0
    with pytest.raises(ValueError, match="row_labels"):
        show_images(images, nrow=3, row_labels=["one"])
    with pytest.raises(ValueError, match="column_labels"):
        show_images(images, nrow=3, column_labels=["a", "b"])
    with pytest.raises(ValueError, match="scale"):
        show_images(images, scale=0)


def test_plot_losses_separate_gives_each_loss_its_own_labelled_axis():
    rows = [{"step": step, "reconstruct": 1.0 / step, "prior": 2.0 * step, "flow": 5.0 * step} for step in range(1, 20)]
    axes = plot_losses(rows, separate=True, labels={"prior": "Eq. 3 prior (KL)"})
    assert len(axes) == 3 and len({ax.figure for ax in axes}) == 1
    assert [ax.get_ylabel() for ax in axes] == ["reconstruct", "Eq. 3 prior (KL)", "flow"]
    assert [len(ax.get_lines()) for ax in axes] == [1, 1, 1]
    # each axis is scaled to its own loss
    assert axes[0].get_ylim()[1] < 2 and axes[2].get_ylim()[1] > 90
    # one shared axis is labelled too
    assert plot_losses(rows, keys=["prior"]).get_ylabel() == "prior"
    assert plot_losses(rows).get_ylabel() == "loss"
    with pytest.raises(ValueError, match="labels"):
        plot_losses(rows, labels={"missing": "x"})
    _, two = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="one Axes per loss"):
        plot_losses(rows, separate=True, ax=two)


def test_learning_curves_are_drawn_against_updates_and_wall_time(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from facelib.viz import plot_learning_curves

    run = pd.DataFrame({"kind": ["train", "val", "val"], "step": [1, 5, 10], "seconds": [1.0, 60.0, 120.0],
                        "generator_updates": [None, 1, 2], "accuracy": [None, 0.2, 0.4]})
    axes = plot_learning_curves({"a": run, "b": run.assign(accuracy=run["accuracy"] / 2)}, ["accuracy"],
                                floors={"accuracy": 0.85})
    assert axes.shape == (2, 1)
    top, bottom = axes[0, 0], axes[1, 0]
    assert list(top.lines[0].get_xdata()) == [1, 2] and list(top.lines[0].get_ydata()) == [0.2, 0.4]
    assert list(bottom.lines[0].get_xdata()) == [1.0, 2.0]  # minutes
    assert any(line.get_linestyle() == "--" for line in top.lines)  # the floor
    with pytest.raises(ValueError, match=r"no learning-curve column\(s\) \['generator_updates'\]"):
        plot_learning_curves({"a": run.drop(columns="generator_updates")}, ["accuracy"])
