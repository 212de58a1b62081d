"""Pictures for the tutorials: image grids, loss and learning curves, and t-SNE plots.

Images follow facelib's convention: float ``[B, 3, H, W]`` (or one ``[3, H, W]``) in
``[-1, 1]``. Pass ``value_range=(0, 1)`` for images already in ``[0, 1]``, such as the
output of :func:`facelib.warp.flow_to_rgb` (the flow colour wheel lives there, next to
the flow convention it draws).

matplotlib is imported inside the plotting functions, so ``import facelib.viz`` stays
cheap and never chooses a backend on its own.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

#: Columns of a loss log that are bookkeeping, not losses; ``plot_losses`` skips them by default.
#: (``facelib.train.Trainer`` writes ``kind`` and ``seconds`` next to ``step`` in ``log.jsonl``.)
NOT_LOSSES = frozenset({"step", "kind", "seconds", "epoch", "time", "wall_time", "lr", "rank"})


def _as_array(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().float().numpy()
    if isinstance(values, np.ndarray):
        return values
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(values).__name__}")


def to_numpy_image(image, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Channels-first image(s) -> channels-last float32 array in ``[0, 1]``, ready for ``imshow``.

    ``image``: ``[C, H, W]`` or ``[B, C, H, W]`` with C = 1 or 3, values in ``value_range``.
    Returns ``[H, W, 3]`` or ``[B, H, W, 3]``; one channel is repeated to grey RGB and
    values outside ``value_range`` are clipped.
    """
    array = _as_array(image, "image").astype(np.float32, copy=False)
    if array.ndim not in (3, 4) or array.shape[-3] not in (1, 3):
        raise ValueError(
            f"image must have shape [C, H, W] or [B, C, H, W] with C = 1 or 3, got {tuple(array.shape)}"
        )
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    array = np.clip((array - low) / (high - low), 0.0, 1.0)
    if array.shape[-3] == 1:
        array = np.repeat(array, 3, axis=-3)
    return np.moveaxis(array, -3, -1)  # [..., H, W, 3]


def image_grid(
    images,
    nrow: int = 8,
    padding: int = 2,
    pad_value: float = 1.0,
    value_range: tuple[float, float] = (-1.0, 1.0),
    title_space: int = 0,
) -> np.ndarray:
    """Tile ``images`` ``[B, C, H, W]`` into one ``[rows*(H+p+t)+p, nrow*(W+p)+p, 3]`` array in ``[0, 1]``.

    ``nrow`` images per row (fewer when B < nrow), ``padding`` pixels of ``pad_value``
    (in ``[0, 1]``; 1 = white) around every tile, ``title_space`` more above each row
    (room for labels). Row-major order: image ``i`` sits in row ``i // nrow``, column ``i % nrow``.
    """
    tiles = to_numpy_image(images, value_range)
    if tiles.ndim != 4:
        raise ValueError("images must be a batch [B, C, H, W], got one image [C, H, W]; add a batch dimension")
    if nrow < 1 or padding < 0 or title_space < 0:
        raise ValueError(
            f"nrow must be >= 1, padding and title_space >= 0; got nrow={nrow}, padding={padding}, title_space={title_space}"
        )
    count, height, width, _ = tiles.shape
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    grid = np.full(
        (rows * (height + padding + title_space) + padding, columns * (width + padding) + padding, 3),
        pad_value,
        dtype=np.float32,
    )
    for index, tile in enumerate(tiles):
        top = padding + title_space + (index // columns) * (height + padding + title_space)
        left = padding + (index % columns) * (width + padding)
        grid[top : top + height, left : left + width] = tile
    return grid


#: By default, nearest-neighbour upscaling by a whole factor makes a tile about this many screen pixels tall.
MIN_TILE_PIXELS = 128


def _fit_label(text: str, width_points: float, fontsize: float) -> tuple[str, float]:
    """``text`` wrapped onto at most two lines, and the font size at which it fits ``width_points``.

    A label is never cut: a long one wraps at a space, then shrinks (down to 6 pt).
    """
    import textwrap

    characters = max(1, int(width_points / (0.6 * fontsize)))  # ~0.6 em per character (DejaVu Sans)
    lines = textwrap.wrap(text, characters) if len(text) > characters and " " in text else [text]
    if len(lines) > 2:
        lines = textwrap.wrap(text, math.ceil(len(text) / 2))[:2] if " " in text else [text]
    longest = max(len(line) for line in lines)
    size = max(6.0, min(fontsize, width_points / (0.6 * longest)))
    return "\n".join(lines), size


def show_images(
    images,
    titles: Sequence[str] | None = None,
    nrow: int = 8,
    ax=None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    padding: int = 2,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    scale: int | None = None,
    fontsize: float = 9.0,
):
    """Draw ``images`` ``[B, C, H, W]`` (or one ``[C, H, W]``) as a grid; return the Axes.

    Labels, all optional, are never cut and never overlap (a long one wraps onto two lines,
    then shrinks):

    - ``titles``: one label per image, above its tile;
    - ``column_labels``: one per column, above the top row (e.g. ``t=0 ... t=1``);
    - ``row_labels``: one per row, left of it (e.g. ``source``, ``target``, ``flow``).

    When ``ax`` is None a new figure is made in which each tile is ``scale`` screen pixels per
    image pixel (nearest neighbour, so no pixel is blurred). By default ``scale`` is the whole
    factor that shows a tile closest to :data:`MIN_TILE_PIXELS` tall at ``figure.dpi``: a 64x64
    face is shown 128x128, a 96x96 one as it is.
    """
    import matplotlib.pyplot as plt

    batch = images.unsqueeze(0) if isinstance(images, torch.Tensor) and images.ndim == 3 else images
    if isinstance(batch, np.ndarray) and batch.ndim == 3:
        batch = batch[None]
    count, _, height, width = batch.shape
    columns = min(nrow, count)
    rows = math.ceil(count / columns)
    for name, labels, expected in (("titles", titles, count), ("column_labels", column_labels, columns),
                                   ("row_labels", row_labels, rows)):
        if labels is not None and len(labels) != expected:
            raise ValueError(
                f"{name} must give one label per {'image' if name == 'titles' else name[:-7]}: "
                f"got {len(labels)} for {expected} ({count} images in {rows} rows of {columns})"
            )
    if scale is not None and (not isinstance(scale, int) or scale < 1):
        raise ValueError(f"scale must be an int >= 1 (screen pixels per image pixel), got {scale!r}")
    dpi = plt.rcParams["figure.dpi"] if ax is None else ax.figure.dpi
    if scale is None:
        scale = max(1, round(MIN_TILE_PIXELS / height)) if ax is None else None
    if scale is None:  # an Axes of the caller's: the scale its current size gives
        box = ax.get_window_extent()
        scale = max(box.width / (columns * (width + padding) + padding), 1e-3)
    points_per_pixel = scale * 72.0 / dpi  # one image pixel, in typographic points

    def fitted(labels):
        return [_fit_label(str(label), (width + padding) * points_per_pixel - 2, fontsize) for label in labels]

    tile_titles = fitted(titles) if titles is not None else None
    header = fitted(column_labels) if column_labels is not None else None
    # room above each row (titles) or above the first row only (column labels), in image pixels
    def band(labels):
        lines = max(label.count("\n") + 1 for label, _ in labels)
        return math.ceil((lines * 1.25 * fontsize + 3) / points_per_pixel)

    title_space = band(tile_titles) if tile_titles else 0
    header_space = band(header) if header else 0
    grid = image_grid(batch, nrow=nrow, padding=padding, value_range=value_range, title_space=title_space)
    if header_space:
        grid = np.concatenate([np.full((header_space, grid.shape[1], 3), 1.0, dtype=grid.dtype), grid])
    if ax is None:
        label_inches = 0.0
        if row_labels is not None:
            label_inches = max(len(str(label)) for label in row_labels) * 0.6 * fontsize / 72 + 0.1
        _, ax = plt.subplots(figsize=(grid.shape[1] * scale / dpi + label_inches, grid.shape[0] * scale / dpi))
        ax.set_position([label_inches / ax.figure.get_figwidth(), 0, 1 - label_inches / ax.figure.get_figwidth(), 1])
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()

    def column_centre(column):
        return padding + column * (width + padding) + width / 2

    def tile_top(row):
        return header_space + padding + title_space + row * (height + padding + title_space)

    for index, (text, size) in enumerate(tile_titles or ()):
        ax.text(column_centre(index % columns), tile_top(index // columns) - 1, text, ha="center", va="bottom",
                fontsize=size, linespacing=1.1)
    for column, (text, size) in enumerate(header or ()):
        ax.text(column_centre(column), header_space + padding - 1, text, ha="center", va="bottom",
                fontsize=size, linespacing=1.1)
    for row, label in enumerate(row_labels or ()):
        ax.text(-1, tile_top(row) + height / 2, str(label), ha="right", va="center", fontsize=fontsize)
    return ax


def _read_loss_log(log):
    import pandas as pd

    if isinstance(log, pd.DataFrame):
        return log
    if isinstance(log, (str, os.PathLike)):
        from .train import read_log

        return read_log(log, kind=None)
    if isinstance(log, Sequence) and all(isinstance(row, dict) for row in log):
        return pd.DataFrame(list(log))
    raise TypeError(
        f"log must be a path to a JSONL file, a pandas.DataFrame or a list of dicts, got {type(log).__name__}"
    )


def plot_losses(
    log,
    keys: Sequence[str] | None = None,
    ax=None,
    smooth: int = 1,
    logy: bool = False,
    title: str | None = None,
    separate: bool = False,
    labels: dict[str, str] | None = None,
):
    """Plot loss curves from a training log; return the Axes (``separate``: an array of them).

    ``log``: a JSONL file, a run folder holding ``log.jsonl`` (as ``facelib.train.Trainer``
    writes it), a DataFrame or a list of dicts.
    Each row holds ``step`` plus one number per loss (rows may omit losses, e.g. an
    evaluation logged every 100 steps). ``keys`` picks the losses; by default every
    numeric column except bookkeeping (:data:`NOT_LOSSES`). ``smooth`` > 1 draws a
    centred moving average over that many logged points.

    ``separate=True`` draws each loss on its own Axes, side by side, each with its own y
    scale: terms of one objective often differ by orders of magnitude and move in opposite
    directions (a VAE's reconstruction falls while its KL rises), which one shared axis hides.
    ``labels`` renames losses on the axes, e.g. ``{"prior": "Eq. 3 KL"}``.
    """
    import matplotlib.pyplot as plt

    frame = _read_loss_log(log)
    if frame.empty:
        raise ValueError("the loss log is empty: nothing to plot")
    if keys is None:
        keys = [
            column for column in frame.columns
            if column not in NOT_LOSSES and np.issubdtype(frame[column].dtype, np.number)
        ]
    missing = [key for key in keys if key not in frame.columns]
    if missing:
        raise ValueError(f"loss log has no column(s) {missing}; available: {list(frame.columns)}")
    if not keys:
        raise ValueError(f"loss log has no numeric loss columns; columns: {list(frame.columns)}")
    if smooth < 1:
        raise ValueError(f"smooth must be a window of >= 1 logged points, got {smooth}")
    labels = dict(labels or {})
    unknown = sorted(set(labels) - set(keys))
    if unknown:
        raise ValueError(f"labels names losses that are not plotted: {unknown}; plotted: {list(keys)}")
    steps = frame["step"] if "step" in frame.columns else frame.index.to_series()
    if separate:
        if ax is not None:
            axes = np.asarray(ax).reshape(-1)
            if len(axes) != len(keys):
                raise ValueError(f"separate=True needs one Axes per loss: got {len(axes)} Axes for {len(keys)} losses")
        else:
            _, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False, layout="constrained")
            axes = axes[0]
    else:
        axes = [ax if ax is not None else plt.subplots(figsize=(6, 3.5))[1]] * len(keys)
    for key, key_ax in zip(keys, axes):
        series = frame[key].set_axis(steps.to_numpy()).dropna()
        if smooth > 1:
            series = series.rolling(smooth, center=True, min_periods=1).mean()
        key_ax.plot(series.index, series.to_numpy(), label=labels.get(key, key))
    for key_ax in dict.fromkeys(axes):  # each Axes once
        key_ax.set_xlabel("step")
        if logy:
            key_ax.set_yscale("log")
        key_ax.grid(alpha=0.3)
    if separate:
        for key, key_ax in zip(keys, axes):
            key_ax.set_ylabel(labels.get(key, key))
        if title:
            axes[0].figure.suptitle(title)
        return np.asarray(axes)
    ax = axes[0]
    ax.set_ylabel("loss" if len(keys) > 1 else labels.get(keys[0], keys[0]))
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def plot_learning_curves(runs: Mapping, metrics: Sequence[str], floors: Mapping[str, float] | None = None,
                         labels: Mapping[str, str] | None = None):
    """A GAN recipe's learning curves side by side with others': one column per metric, against
    generator updates (top) and training wall time (bottom); returns the ``[2, len(metrics)]`` Axes.

    ``runs``: label -> a run folder, JSONL log or DataFrame holding the ``"val"`` lines that a
    :class:`facelib.evaluation.LearningCurve` writes through the Trainer (``step``, ``seconds``,
    ``generator_updates`` and each metric). ``floors``: metric -> a floor, drawn as a dashed line.
    ``labels`` renames metrics on the axes.
    """
    import matplotlib.pyplot as plt

    floors, labels = dict(floors or {}), dict(labels or {})
    if not runs or not metrics:
        raise ValueError("plot_learning_curves needs at least one run and one metric")
    _, axes = plt.subplots(2, len(metrics), figsize=(4.2 * len(metrics), 6.4), squeeze=False, layout="constrained")
    for name, log in runs.items():
        frame = _read_loss_log(log)
        if "kind" in frame.columns:
            frame = frame[frame["kind"] == "val"]
        missing = [column for column in ("generator_updates", "seconds", *metrics) if column not in frame.columns]
        if missing:
            raise ValueError(f"run {name!r} has no learning-curve column(s) {missing}; columns: {list(frame.columns)}")
        for column, metric in enumerate(metrics):
            for row, x in enumerate(("generator_updates", "seconds")):
                points = frame[[x, metric]].dropna()
                scale = 60.0 if x == "seconds" else 1.0
                axes[row, column].plot(points[x] / scale, points[metric], marker=".", label=name)
    for column, metric in enumerate(metrics):
        for row, xlabel in enumerate(("generator updates", "training wall time (minutes)")):
            ax = axes[row, column]
            if metric in floors:
                ax.axhline(floors[metric], color="grey", linestyle="--", linewidth=1, label="floor")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(labels.get(metric, metric))
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    return axes


def embed_tsne(features, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE embedding ``[N, 2]`` of ``features`` ``[N, D]`` (scikit-learn, PCA init, fixed seed).

    The perplexity is lowered to ``(N - 1) / 3`` when there are too few points for it.
    """
    from sklearn.manifold import TSNE

    array = _as_array(features, "features").astype(np.float32, copy=False)
    if array.ndim != 2 or array.shape[0] < 4:
        raise ValueError(f"features must have shape [N, D] with N >= 4, got {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError("features contain NaN or inf; t-SNE needs finite values")
    perplexity = min(perplexity, (array.shape[0] - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(array)


def plot_tsne(
    features,
    labels,
    label_names: Sequence[str] | None = None,
    ax=None,
    perplexity: float = 30.0,
    seed: int = 0,
    title: str | None = None,
):
    """Scatter a t-SNE of ``features`` ``[N, D]``, one colour per integer label; return the Axes.

    ``labels``: ``[N]`` integers; ``label_names[label]`` names each class in the legend
    (e.g. ``facelib.EXPRESSIONS`` for expression labels).
    """
    import matplotlib.pyplot as plt

    label_array = _as_array(labels, "labels").reshape(-1)
    embedding = embed_tsne(features, perplexity=perplexity, seed=seed)
    if label_array.shape[0] != embedding.shape[0]:
        raise ValueError(f"labels has {label_array.shape[0]} entries for {embedding.shape[0]} feature rows")
    classes = np.unique(label_array).astype(int)
    if label_names is not None and (classes.min() < 0 or classes.max() >= len(label_names)):
        raise ValueError(f"labels run over {classes.tolist()} but label_names has {len(label_names)} names")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for position, label in enumerate(classes):
        chosen = label_array == label
        name = label_names[label] if label_names is not None else str(label)
        ax.scatter(embedding[chosen, 0], embedding[chosen, 1], s=10, color=colours(position % colours.N), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, markerscale=1.5, loc="best")
    return ax


_BENCHMARK_COLUMNS = ("editor", "target", "metric", "value", "low", "high")


def _benchmark_rows(table, metric: str):
    missing = [column for column in _BENCHMARK_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"table lacks the columns {missing}; pass facelib.benchmark.run(...).table")
    rows = table[table["metric"] == metric]
    if rows.empty:
        raise ValueError(f"no rows for metric {metric!r}; the table has {sorted(table['metric'].unique())}")
    return rows


def plot_metric_bars(table, metrics: Sequence[str], ncols: int = 3, axes=None):
    """One panel per metric of a :func:`facelib.benchmark.run` table: a bar per (editor, target)
    with its 95 % interval as an error bar; return the axes."""
    import matplotlib.pyplot as plt

    metrics = list(metrics)
    if axes is None:
        nrows = math.ceil(len(metrics) / ncols)
        _, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    flat = np.asarray(axes).reshape(-1)
    for ax, metric in zip(flat, metrics):
        rows = _benchmark_rows(table, metric)
        labels = [f"{editor}\n({target})" for editor, target in zip(rows["editor"], rows["target"])]
        values, low, high = (rows[column].to_numpy(float) for column in ("value", "low", "high"))
        errors = np.stack([values - low, high - values])
        errors = np.where(np.isfinite(errors), errors, 0.0)
        colours = plt.get_cmap("tab10")(np.arange(len(rows)) % 10)
        ax.bar(np.arange(len(rows)), values, yerr=errors, capsize=3, color=colours)
        ax.set_xticks(np.arange(len(rows)), labels, fontsize=7, rotation=35, ha="right")
        ax.set_title(metric, fontsize=9)
    for ax in flat[len(metrics):]:
        ax.axis("off")
    plt.tight_layout()
    return axes


def plot_quality_speed(table, quality: str, speed: str = "ms per edit (1 image, CPU)", ax=None):
    """Scatter ``quality`` (with its interval) against ``speed`` for each (editor, target) of a
    :func:`facelib.benchmark.run` table; speed on a log axis. Return the Axes."""
    import matplotlib.pyplot as plt

    quality_rows = _benchmark_rows(table, quality).set_index(["editor", "target"])
    speed_rows = _benchmark_rows(table, speed).set_index(["editor", "target"])
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4))
    for position, key in enumerate(quality_rows.index):
        value, low, high = quality_rows.loc[key, ["value", "low", "high"]].to_numpy(float)
        x = float(speed_rows.loc[key, "value"])
        error = [[value - low], [high - value]] if np.isfinite([low, high]).all() else None
        ax.errorbar([x], [value], yerr=error, fmt="o", capsize=3, color=plt.get_cmap("tab10")(position % 10),
                    label=f"{key[0]} ({key[1]})")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())  # 0.5, 1, 5 rather than 5 x 10^-1
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(speed)
    ax.set_ylabel(quality)
    ax.legend(fontsize=7)
    return ax
