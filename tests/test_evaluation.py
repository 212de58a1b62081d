"""The evaluation protocol (facelib.evaluation): the same rows for every editor, targets built from
held-out pairs without handing over the truth (unless oracle=True), the metric registry, honest NaN rows."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facelib import EXPRESSIONS
from facelib.data import SynthFaces
from facelib.editors import TARGET_KINDS, Editor, EditResult, Target
from facelib.evaluation import EVALUATOR_NAMES, evaluate, held_out_pairs, list_metrics, metric, protocol, row
from facelib.metrics import FD_NAME, VERIFICATION_NAME, VERIFICATION_REAL_NAME, psnr
from facelib.warp import warp

torch.set_num_threads(1)
SIZE, N = 32, 8  # small held-out samples keep each evaluation under a second
NO_EVALUATORS = dict.fromkeys(EVALUATOR_NAMES)


class SpyEditor(Editor):
    """Accepts every kind, records each (images, target) it is given, returns the sources."""

    name, accepts, image_size, expressions = "spy", TARGET_KINDS, SIZE, tuple(EXPRESSIONS)

    def __init__(self):
        self.calls = []

    def _edit(self, images, target):
        self.calls.append((images.clone(), target))
        return EditResult(output=images)


class ShiftEditor(Editor):
    """A flow method: every face moved one pixel to the right."""

    name, accepts, image_size, expressions = "shift", ("expression", "reference"), SIZE, tuple(EXPRESSIONS)

    def _edit(self, images, target):
        flow = torch.zeros(len(images), 2, SIZE, SIZE)
        flow[:, 0] = -1.0
        return EditResult(output=warp(images, flow), flow=flow)


class ReferenceEditor(Editor):
    """Returns ``transform(reference)``: with oracle=True, the true target itself (or a blur of it)."""

    name, accepts, image_size = "copies_reference", ("reference",), SIZE

    def __init__(self, transform=lambda reference, images: reference):
        self.transform = transform

    def _edit(self, images, target):
        return EditResult(output=self.transform(target.reference, images))


def tiny_evaluators():
    """Untrained but structurally faithful evaluators (logits over EXPRESSIONS, AUs in [0, 5], unit embeddings)."""
    torch.manual_seed(0)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.Flatten(), torch.nn.LazyLinear(8))
            self.head = torch.nn.Linear(8, len(EXPRESSIONS))

        def features(self, x):
            return self.body(x)

        def forward(self, x):
            return self.head(self.features(x))

    class Regressor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(17))

        def forward(self, x):
            return 5 * torch.sigmoid(self.net(x))

    class Embedder(torch.nn.Module):
        def forward(self, x):
            return F.normalize(F.adaptive_avg_pool2d(x, 4).flatten(1), dim=1)

    return {"expression_classifier": Classifier(), "au_regressor": Regressor(), "identity_embedder": Embedder()}


def truth(n=N):
    return SynthFaces("multipie", "test", size=SIZE, pairs=True, seed=0).batch(range(n))


def run(editor, kind="expression", **options):
    options = {"n": N, "batch_size": 4, "progress": False, "evaluators": NO_EVALUATORS} | options
    return evaluate(editor, kind, **options)


def test_two_editors_get_the_same_rows_and_tables_concatenate():
    evaluators = tiny_evaluators()
    pixels, flows = run(SpyEditor(), evaluators=evaluators), run(ShiftEditor(), evaluators=evaluators)
    assert list(pixels.columns) == list(protocol.COLUMNS) == ["editor", "target", "metric", "value", "n", "note"]
    assert list(pixels["metric"]) == list(flows["metric"]) == list_metrics()
    assert set(pixels["editor"]) == {"spy"} and set(flows["target"]) == {"expression"}
    assert pixels.attrs["n"] == N
    by_metric = {name: table.set_index("metric") for name, table in (("spy", pixels), ("shift", flows))}
    # the spy returns the sources: exactly the "no edit" numbers; its flow EPE is an honest NaN row
    truths = truth()
    assert by_metric["spy"].loc["PSNR (whole image, dB)", "value"] == pytest.approx(psnr(truths["source"], truths["target"]), abs=1e-4)
    epe = by_metric["spy"].loc["flow EPE (visible mask, px)"]
    assert math.isnan(epe["value"]) and epe["n"] == 0 and "spy returns no flow" in epe["note"]
    assert by_metric["shift"].loc["flow EPE (visible mask, px)", "value"] > 0.5
    assert by_metric["shift"].loc["expression accuracy (facelib classifier)", "n"] == N
    # the first 8 pairs show one person (30 pairs each): no different-identity pairs to verify against
    verification = by_metric["shift"].loc[VERIFICATION_NAME]
    assert math.isnan(verification["value"]) and "all pairs show one identity" in verification["note"]
    names = " ".join(pixels["metric"])
    assert "FID" not in names and "LightCNN" not in names and "VGG" not in names


@pytest.mark.parametrize("kind", ["expression", "aus", "reference"])
def test_the_true_target_reaches_an_editor_only_with_the_oracle_flag(kind):
    spy = SpyEditor()
    run(spy, kind)
    truths = truth()
    images = torch.cat([images for images, _ in spy.calls])
    torch.testing.assert_close(images, truths["source"])  # the editor is asked to edit the sources
    targets = [target for _, target in spy.calls]
    assert {target.kind for target in targets} == {kind}
    if kind == "expression":
        assert [name for t in targets for name in t.expression] == [EXPRESSIONS[int(i)] for i in truths["target_emotion"]]
        assert [name for t in targets for name in t.source_expression] == [EXPRESSIONS[int(i)] for i in truths["source_emotion"]]
        assert all(float(t.intensities(1)[0]) == 1.0 for t in targets)
    if kind == "aus":
        torch.testing.assert_close(torch.cat([t.aus for t in targets]), truths["target_aus"])
    if kind == "reference":
        reference = torch.cat([t.reference for t in targets])
        # another person's face: far from the true target, yet showing its expression in the same pose
        assert psnr(reference, truths["target"], per_image=True).max() < 25
        pairs = held_out_pairs("multipie", "test", SIZE, N, progress=False)
        assert (pairs.partners != truths["identity"]).all() and set(pairs.partners.tolist()) <= set(pairs.dataset.identities)
    else:
        assert all(t.reference is None for t in targets)  # no image at all, least of all the true target
    oracle_spy = SpyEditor()
    if kind != "reference":
        with pytest.raises(ValueError, match="oracle=True"):
            run(oracle_spy, kind, oracle=True)
        assert oracle_spy.calls == []
    else:
        run(oracle_spy, kind, oracle=True)
        torch.testing.assert_close(torch.cat([t.reference for _, t in oracle_spy.calls]), truths["target"])


def test_unknown_kinds_unaccepted_kinds_and_bad_outputs_are_refused():
    with pytest.raises(ValueError, match="unknown target kind 'emotion'.*expression"):
        run(SpyEditor(), "emotion")
    with pytest.raises(ValueError, match="copies_reference does not accept expression targets; it accepts"):
        run(ReferenceEditor(), "expression")
    with pytest.raises(ValueError, match="n must be an int of at least 2"):
        run(SpyEditor(), n=1)
    with pytest.raises(ValueError, match="unknown evaluators"):
        run(SpyEditor(), evaluators={"lightcnn": None})
    with pytest.raises(TypeError, match="Editor or a registered name"):
        evaluate(lambda source, spec: source, "expression")
    with pytest.raises(ValueError, match="copies_reference's output has values"):
        run(ReferenceEditor(lambda reference, images: 3 * images), "reference")
    with pytest.raises(ValueError, match="not shaped like the sources"):
        run(ReferenceEditor(lambda reference, images: images[:, :, :16]), "reference")


def test_oracle_edits_score_perfectly_and_exact_edits_are_counted():
    table = run(ReferenceEditor(), "reference", oracle=True, evaluators=tiny_evaluators(), n=40)  # two identities
    assert set(table["target"]) == {"reference (oracle: the true target)"}
    value = dict(zip(table["metric"], table["value"]))
    assert value["PSNR (whole image, dB)"] == math.inf and value["PSNR (visible mask, dB)"] == math.inf
    assert value["SSIM"] == pytest.approx(1.0, abs=1e-6)
    assert value["expression accuracy (facelib classifier)"] == value["expression accuracy on real targets (facelib classifier)"]
    assert value[FD_NAME] == pytest.approx(0.0, abs=1e-3)
    assert value[VERIFICATION_NAME] >= value[VERIFICATION_REAL_NAME]  # its threshold was fitted on these very pairs
    assert 0 <= value["AU MSE (facelib AU regressor)"] and -1 <= value["AU PCC (facelib AU regressor)"] <= 1

    def half_exact(reference, images):
        keep = (torch.arange(len(images)) % 2 == 0).view(-1, 1, 1, 1)
        return torch.where(keep, reference, images)

    whole = run(ReferenceEditor(half_exact), "reference", oracle=True).set_index("metric").loc["PSNR (whole image, dB)"]
    assert 5 < whole["value"] < math.inf and f"{N // 2} of {N} edits equal the target exactly" in whole["note"]


def test_a_blurred_edit_loses_sharpness():
    """FVAE's argument against pixel VAEs, measured: a blurred (but well aligned) edit is less sharp."""
    blur = ReferenceEditor(lambda reference, images: F.avg_pool2d(reference, 3, 1, 1, count_include_pad=False))
    value = run(blur, "reference", oracle=True).set_index("metric")["value"]
    assert value["sharpness (edited)"] < 0.5 * value["sharpness (real targets)"]


def test_missing_evaluators_give_nan_rows_with_notes():
    table = run(SpyEditor())
    skipped = table[table["note"].str.startswith("skipped: evaluators[")]
    assert len(skipped) == 7 and skipped["value"].isna().all() and (skipped["n"] == 0).all()
    assert set(skipped["metric"]) == {"expression accuracy (facelib classifier)",
                                      "expression accuracy on real targets (facelib classifier)", FD_NAME,
                                      "AU MSE (facelib AU regressor)", "AU PCC (facelib AU regressor)",
                                      VERIFICATION_NAME, VERIFICATION_REAL_NAME}
    assert table.loc[table["metric"] == "SSIM", "value"].notna().all()
    # only the regressor given: its rows are measured, the others still say why they are missing
    some = run(SpyEditor(), evaluators=NO_EVALUATORS | {"au_regressor": tiny_evaluators()["au_regressor"]})
    assert some.set_index("metric").loc["AU MSE (facelib AU regressor)", "n"] == N
    assert list(some["metric"]) == list(table["metric"])


def test_metric_registry(monkeypatch):
    monkeypatch.setattr(protocol, "_METRICS", dict(protocol._METRICS))  # registrations end with the test

    @metric("mean absolute change", "largest change")
    def changes(bundle):
        change = (bundle.edited - bundle.source).abs()
        return [row("mean absolute change", change.mean(), bundle.count, "mean |edited - source|"),
                row("largest change", change.max(), bundle.count, "max |edited - source|")]

    assert list_metrics()[-2:] == ["mean absolute change", "largest change"]
    table = run(ShiftEditor(), metrics=["PSNR (whole image, dB)", "largest change"])
    assert list(table["metric"]) == ["PSNR (whole image, dB)", "largest change"]
    assert 0 < table["value"].iloc[1] <= 2
    assert run(SpyEditor(), metrics=["largest change"])["value"].iloc[0] == 0.0
    with pytest.raises(ValueError, match="already registered"):
        protocol.register_metric("SSIM", changes)
    with pytest.raises(ValueError, match="unknown evaluator 'vgg'"):
        protocol.register_metric("VGG distance", changes, needs="vgg")
    with pytest.raises(ValueError, match="unknown metrics"):
        run(SpyEditor(), metrics=["FID"])
    protocol.register_metric("liar", lambda bundle: [row("something else", 0.0, 1, "")])
    with pytest.raises(RuntimeError, match="not the rows it registered"):
        run(SpyEditor(), metrics=["liar"])
    # a metric that needs an evaluator is not called without it: its rows are NaN with the reason
    protocol.register_metric("needs a classifier", lambda bundle: 1 / 0, needs="expression_classifier")
    nan_row = run(SpyEditor(), metrics=["needs a classifier"]).iloc[0]
    assert math.isnan(nan_row["value"]) and "evaluators['expression_classifier'] is None" in nan_row["note"]


def test_optical_flow_editor_is_table1s_row_in_oracle_mode():
    import facelib
    from facelib.models.baselines import OpticalFlowEditor, optical_flow

    assert "optical_flow" in set(facelib.list_editors()["name"])
    editor = facelib.load_editor("optical_flow")
    assert isinstance(editor, OpticalFlowEditor) and editor.accepts == ("reference",)
    small = SynthFaces("multipie", "test", size=64, pairs=True).batch(range(4))

    result = editor.edit(small["source"], Target(reference=small["target"]))
    torch.testing.assert_close(result.output, warp(small["source"], optical_flow(small["source"], small["target"])))
    assert psnr(result.output, small["target"]) > psnr(small["source"], small["target"]) + 1
    with pytest.raises(ValueError, match="optical_flow does not accept expression targets"):
        editor.edit(small["source"], Target(expression="happy"))


def test_spread_pairs_cover_several_identities_where_the_first_n_show_one():
    from facelib.evaluation import held_out_pairs

    first = held_out_pairs("rafd", "test", 16, 8, progress=False)
    spread = held_out_pairs("rafd", "test", 16, 8, spread=True, progress=False)
    ids = lambda pairs: torch.cat([b["identity"] for b in pairs.batches]).unique().numel()  # noqa: E731
    assert ids(first) == 1 and ids(spread) >= 6


def test_a_learning_curve_point_is_evaluate_on_the_same_pairs():
    from facelib import load_editor
    from facelib.evaluation import LearningCurve, evaluate

    metrics = ["expression accuracy (facelib classifier)", "SSIM"]
    curve = LearningCurve("multipie", "expression", metrics=metrics, n=12)
    editor = load_editor("average_flow")
    point = curve(editor)
    table = evaluate(editor, "expression", preset="multipie", n=12, spread=True, metrics=metrics, progress=False)
    assert point == pytest.approx(dict(zip(table.metric, table.value)))
    with pytest.raises(ValueError, match="at least one metric"):
        LearningCurve("multipie", "expression", metrics=[])
