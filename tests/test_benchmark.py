"""facelib.benchmark: the same numbers as evaluate(), intervals over identities, paired tests, costs."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from facelib import benchmark
from facelib.checkpoint import available_pretrained, read_manifest
from facelib.evaluation import protocol
from facelib.metrics import FD_NAME, frechet_distance

EVALUATORS = ("expression_classifier", "au_regressor", "identity_embedder")
needs_shipped = pytest.mark.skipif(not {"average_flow", *EVALUATORS} <= set(available_pretrained()),
                                   reason="needs the shipped average_flow and evaluator weights")


def _scores(values_by_person: list[list[float]], name: str = "SSIM", editor: str = "a") -> benchmark.EditScores:
    """Hand-made scores: ``values_by_person[p]`` are person p's edits' values of ``name``."""
    identity = np.concatenate([[p] * len(values) for p, values in enumerate(values_by_person)])
    values = np.concatenate([np.asarray(v, float) for v in values_by_person])
    per_edit = {metric: np.full(len(values), math.nan) for metric, _ in benchmark.QUALITY_METRICS}
    per_edit[name] = values
    return benchmark.EditScores(editor, "expression", identity, per_edit, None, np.zeros((len(values), 17)),
                                None, None, 0.0)


@pytest.fixture(scope="module")
def bundle():
    found, missing = protocol.resolve_evaluators(None)
    pairs = protocol.held_out_pairs("multipie", "test", 64, 40, spread=True, progress=False)
    from facelib import load_editor

    edits = protocol.run_editor(load_editor("average_flow"), "expression", pairs, progress=False)
    return dataclasses.replace(edits, evaluators=found, missing=missing)


@needs_shipped
def test_values_are_evaluates_values_for_the_same_edits(bundle):
    scores = benchmark.score_edits(bundle, "expression")
    everything = np.arange(scores.count)
    reference = {row["metric"]: row["value"] for row in protocol.measure(bundle)}
    for name, _ in benchmark.QUALITY_METRICS:
        assert scores.statistic(name, everything) == pytest.approx(reference[name], rel=1e-5, abs=1e-6), name


@needs_shipped
def test_run_table_has_every_metric_with_an_interval_around_its_value():
    result = benchmark.run(["average_flow"], n=40, resamples=100, progress=False)
    table = result.table
    assert list(table.columns) == benchmark.COLUMNS
    quality = table[table["metric"].isin([name for name, _ in benchmark.QUALITY_METRICS])]
    assert len(quality) == len(benchmark.QUALITY_METRICS)
    assert (quality["low"] <= quality["value"] + 1e-9).all() and (quality["value"] <= quality["high"] + 1e-9).all()
    assert (quality["n_identities"] == len(np.unique(result.scores["average_flow", "expression"].identity))).all()
    costs = table.set_index("metric")
    manifest = read_manifest()
    assert costs.loc["training minutes", "value"] == pytest.approx(manifest["average_flow"]["wall_time_s"] / 60)
    assert costs.loc["ms per edit (1 image, CPU)", "value"] > 0
    assert set(result.wide().columns) >= {name for name, _ in benchmark.QUALITY_METRICS}


def test_interval_resamples_identities_not_edits():
    # 10 people whose means differ (sd 1) and whose edits barely do: the spread is between people,
    # so an interval over people is about 2 * 1.96 / sqrt(10) = 1.2 wide; over the 200 edits it would be 0.28
    rng = np.random.default_rng(0)
    means = rng.normal(0, 1, 10)
    scores = _scores([list(mean + rng.normal(0, 0.01, 20)) for mean in means])
    value, low, high = benchmark.interval(scores, "SSIM", resamples=1000)
    assert value == pytest.approx(means.mean(), abs=0.01)
    assert 0.8 < high - low < 2.0


def test_interval_of_constant_scores_is_a_point_and_too_few_people_give_none():
    assert benchmark.interval(_scores([[0.5, 0.5]] * 5), "SSIM", resamples=200) == (0.5, 0.5, 0.5)
    value, low, high = benchmark.interval(_scores([[0.1, 0.2], [0.3]]), "SSIM", resamples=200)
    assert value == pytest.approx(0.2) and math.isnan(low) and math.isnan(high)


def test_paired_test_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    people = [list(rng.normal(0, 1, 3)) for _ in range(12)]
    a = _scores(people, editor="a")
    better = _scores([[v + 0.5 for v in values] for values in people], editor="b")
    same = _scores(people, editor="c")
    found = benchmark.paired_test(better, a, "SSIM", resamples=999)
    assert found["difference"] == pytest.approx(0.5) and found["p"] < 0.01
    # 12 people: 2^12 swaps, scipy runs the exact test; equal scores never differ
    assert benchmark.paired_test(a, same, "SSIM")["p"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same held-out pairs"):
        benchmark.paired_test(a, _scores(people[:-1], editor="d"), "SSIM")


def test_pairwise_verdicts_follow_each_metrics_direction():
    rng = np.random.default_rng(2)
    people = [list(rng.normal(0, 0.1, 3)) for _ in range(12)]
    low = _scores(people, name="AU MSE (facelib AU regressor)", editor="low")
    high = _scores([[v + 1.0 for v in values] for values in people], name="AU MSE (facelib AU regressor)",
                   editor="high")
    result = benchmark.BenchmarkResult(None, {("low", "expression"): low, ("high", "expression"): high}, "")
    table = result.pairwise("AU MSE (facelib AU regressor)", "expression", resamples=999)
    assert table.loc[0, "verdict"] == "low better"  # lower MSE wins
    assert table.loc[0, "p_holm"] >= table.loc[0, "p"]
    with pytest.raises(ValueError, match="unknown metric"):
        result.pairwise("beauty", "expression")
    with pytest.raises(ValueError, match="fewer than two editors"):
        result.pairwise("SSIM", "aus")


def test_frechet_distance_svd_route_agrees_with_sqrtm():
    generator = torch.Generator().manual_seed(0)
    for rows_a, rows_b, dim in ((60, 90, 128), (300, 200, 32)):  # fewer rows than dimensions, and more
        a = torch.randn(rows_a, dim, generator=generator) * torch.rand(dim, generator=generator) * 3
        b = torch.randn(rows_b, dim, generator=generator) @ torch.randn(dim, dim, generator=generator) * 0.2 + 0.3
        assert frechet_distance(a, b, method="svd") == pytest.approx(frechet_distance(a, b), rel=1e-5)
    with pytest.raises(ValueError, match="'sqrtm' or 'svd'"):
        frechet_distance(a, b, method="fast")


def test_run_refuses_bad_input():
    with pytest.raises(ValueError, match="target_kinds must be"):
        benchmark.run(["average_flow"], target_kinds=("smile",))
    with pytest.raises(ValueError, match="resamples must be"):
        benchmark.run(["average_flow"], resamples=10)
    with pytest.raises(ValueError, match="no editors"):
        benchmark.run([])


@needs_shipped
def test_expression_grid_shows_the_true_renders_beside_every_editor():
    from facelib.data import emotion_asymmetry, emotion_aus, render

    grid = benchmark.expression_grid(["average_flow"], faces=2)
    images, rows, columns = grid["images"], grid["row_labels"], grid["column_labels"]
    assert rows == ["truth (person 1)", "average_flow", "truth (person 2)", "average_flow"]
    assert columns[0] == "source" and "neutral" not in columns
    assert images.shape == (4, len(columns), 3, 64, 64)
    from facelib.data import SynthFaces

    person = torch.tensor(SynthFaces("multipie", "test", size=64).identities[:1])
    name = columns[1]
    truth = render(person, emotion_aus(name, identity=person), torch.zeros(1), size=64,
                   asymmetry=emotion_asymmetry(name, person))["image"][0]
    torch.testing.assert_close(images[0, 1], truth)
    assert not torch.equal(images[1, 1], images[1, 0])  # the editor changed the face


def test_plots_refuse_a_table_without_the_metric():
    import pandas as pd

    from facelib import viz

    table = pd.DataFrame([{"editor": "a", "target": "expression", "metric": "SSIM", "value": 0.5, "low": 0.4,
                           "high": 0.6}])
    with pytest.raises(ValueError, match="no rows for metric 'PSNR'"):
        viz.plot_metric_bars(table, ["PSNR"])
    with pytest.raises(ValueError, match="lacks the columns"):
        viz.plot_quality_speed(table.drop(columns="low"), "SSIM")


def test_an_editor_that_does_not_know_a_presets_expressions_is_skipped_with_a_note():
    from facelib.models.stargan import StarGANConfig, StarGANEditor, StarGANGenerator

    stargan = StarGANEditor(StarGANGenerator(StarGANConfig()))  # rafd's eight emotions: no squint, no scream
    assert benchmark.takes_targets(stargan, "expression", "rafd")
    assert not benchmark.takes_targets(stargan, "expression", "multipie")
    assert not benchmark.takes_targets(stargan, "aus", "rafd")  # it does not accept AUs at all
    assert not benchmark.edits_preset(stargan, "multipie") and benchmark.edits_preset(stargan, "rafd")
    result = benchmark.run([stargan], target_kinds=("expression",), preset="rafd", n=16, resamples=100,
                           progress=False)
    assert set(result.table["editor"]) == {"stargan"} and result.table.attrs["skipped"] == []
    result = benchmark.run([stargan], preset="multipie", n=16, resamples=100, progress=False)
    assert result.table.empty
    assert result.table.attrs["skipped"] == ["stargan: expression targets (it does not know every expression of "
                                             "multipie)"]
