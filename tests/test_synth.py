"""SynthFaces: renderer ground truth, presets, dataset, widget.

The central check is the ground truth: warping the source of a pair by its true flow must
reproduce the target wherever ``visible`` says the flow explains the pixel.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import facelib
from facelib.conventions import AU_CODES, EXPRESSIONS, NUM_AUS, au_index
from facelib.data import PRESETS, SynthFaces, emotion_aus, get_preset, render, render_pair
from facelib.data import synth
from facelib.warp import warp

torch.set_num_threads(1)


def masked_psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR per image over ``mask`` with images mapped from [-1, 1] to [0, 1]."""
    err = ((a - b) / 2) ** 2 * mask
    mse = err.sum((1, 2, 3)) / (mask.sum((1, 2, 3)) * a.shape[1]).clamp_min(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


CLOSED = ["neutral", "angry", "contemptuous", "sad", "squint"]  # no AU10/25/26: lips stay together


# ------------------------------------------------------------------------------------------ ground truth
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_warping_source_by_true_flow_reproduces_target(preset):
    data = SynthFaces(preset, "test", size=64, pairs=True, seed=1)
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:8]
    batch = data.batch(index)
    if get_preset(preset).noise:  # sensor noise is drawn independently: compare the clean renders
        batch = {**batch, **synth.render_pair(batch["identity"], batch["source_aus"], batch["target_aus"],
                                              batch["yaw"], 64, light="random", background="random",
                                              seeds=data._labels(index)["seed"])}
    warped = warp(batch["source"], batch["flow"])
    psnr = masked_psnr(warped, batch["target"], batch["visible"])
    assert psnr.min() >= 35.0, f"{preset}: worst PSNR {psnr.min():.1f} dB over the visible mask"
    # the check can fail: without the flow the same pixels do not match where the face moved
    moved = batch["flow"].abs().amax(1, keepdim=True) > 0.5
    if moved.any():
        assert masked_psnr(batch["source"], batch["target"], batch["visible"] * moved).min() < 35.0


def test_ground_truth_holds_at_128_pixels_and_for_a_moving_silhouette():
    data = SynthFaces("rafd", "test", size=128, pairs=True, seed=7)
    index = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))[:12]
    batch = data.batch(index)
    psnr = masked_psnr(warp(batch["source"], batch["flow"]), batch["target"], batch["visible"])
    assert psnr.min() >= 35.0, psnr
    # where the flow is zero (background, unmoved face) a visible pixel is the source's own pixel:
    # a silhouette that moved away (hair over background) must not be marked visible there
    still = (batch["flow"].abs().amax(1, keepdim=True) == 0) & (batch["visible"] > 0)
    assert ((batch["source"] - batch["target"]).abs().amax(1, keepdim=True)[still] < 0.06).all()


def test_mouth_closed_pairs_are_mostly_visible_and_yawed_pairs_hold():
    g = torch.Generator().manual_seed(3)
    n = 10
    ids = torch.randint(0, 10**6, (n,), generator=g)
    src = torch.tensor([EXPRESSIONS.index(CLOSED[i % 5]) for i in range(n)])
    tgt = torch.tensor([EXPRESSIONS.index(CLOSED[(i * 3 + 1) % 5]) for i in range(n)])
    yaw = torch.linspace(-45, 45, n)
    out = render_pair(ids, emotion_aus(src, 5.0, ids), emotion_aus(tgt, 5.0, ids), yaw, 64,
                      background="textured", light="random", generator=g)
    face = out["face_mask"]
    coverage = (out["visible"] * face).sum((1, 2, 3)) / face.sum((1, 2, 3))
    assert coverage.min() >= 0.7, coverage
    assert masked_psnr(warp(out["source"], out["flow"]), out["target"], out["visible"]).min() >= 35.0
    # texture that flow cannot explain is excluded: a blink's closed lids are not visible
    blink = torch.zeros(1, NUM_AUS)
    blink[0, au_index(45)] = 5.0
    closed = render_pair(torch.tensor([5]), torch.zeros(1, NUM_AUS), blink, None, 64)
    eyes = closed["target_landmarks"][0, synth.LANDMARK_NAMES.index("eye_left_top")].round().long()
    assert closed["visible"][0, 0, eyes[1], eyes[0]] == 0


def test_identical_expressions_have_zero_flow_and_full_visibility():
    ids = torch.tensor([1, 2])
    aus = emotion_aus(torch.tensor([5, 6]), 4.0, ids)
    out = render_pair(ids, aus, aus, torch.tensor([0.0, 30.0]), 48)
    assert torch.equal(out["source"], out["target"])
    assert out["flow"].abs().max() < 1e-3
    assert out["visible"].mean() > 0.97


def test_flow_is_finite_and_bounded_everywhere():
    # extreme pose and expression changes: where no source point exists the flow must not blow up
    ids = torch.arange(8)
    src = torch.zeros(8, NUM_AUS)
    tgt = torch.full((8, NUM_AUS), 5.0)
    yaw = torch.tensor([-45.0, -30.0, 0.0, 45.0, 30.0, 15.0, -15.0, 40.0])
    out = render_pair(ids, src, tgt, yaw, 32)
    assert torch.isfinite(out["flow"]).all()
    assert out["flow"].abs().max() <= 32
    back = render_pair(ids, tgt, src, yaw, 32)
    assert torch.isfinite(back["flow"]).all()
    assert back["flow"].abs().max() <= 32


def test_landmarks_follow_the_flow():
    ids = torch.tensor([7, 8, 9])
    src = emotion_aus(torch.tensor([0, 0, 0]), 0.0, ids)
    tgt = emotion_aus(torch.tensor([5, 7, 9]), 5.0, ids)
    out = render_pair(ids, src, tgt, torch.tensor([0.0, 20.0, -30.0]), 64)
    pts = out["target_landmarks"]                                            # [N, K, 2]
    grid = (pts + 0.5) / 64 * 2 - 1
    flow_at = F.grid_sample(out["flow"], grid[:, :, None], align_corners=False)[..., 0].permute(0, 2, 1)
    # lid and inner-lip points move with texture (lids, parting lips), not with the flow
    rigid = [i for i, name in enumerate(synth.LANDMARK_NAMES) if not name.endswith(("_top", "_bottom", "_inner"))
             or name.startswith("brow")]
    assert (pts + flow_at - out["source_landmarks"])[:, rigid].abs().max() < 0.2
    assert pts.shape == (3, len(synth.LANDMARK_NAMES), 2)
    assert ((pts > 0) & (pts < 63)).all()
    # a smile lifts the mouth corners (image y points down)
    corners = [synth.LANDMARK_NAMES.index("mouth_left"), synth.LANDMARK_NAMES.index("mouth_right")]
    assert (out["target_landmarks"][0, corners, 1] < out["source_landmarks"][0, corners, 1] - 1).all()


# ------------------------------------------------------------------------------------------ renderer
def test_every_au_has_a_visible_effect():
    base = render(torch.tensor([11]), torch.zeros(1, NUM_AUS), None, 64)["image"]
    aus = torch.eye(NUM_AUS) * 5.0
    out = render(torch.full((NUM_AUS,), 11), aus, None, 64)["image"]
    change = (out - base).abs().amax(1).flatten(1)                           # [17, S*S]
    strongly_changed = (change > 0.1).sum(1)
    assert (strongly_changed >= 10).all(), dict(zip(AU_CODES, strongly_changed.tolist()))
    # readable at 64 px: every AU at intensity 5 changes many pixels by more than 4 grey levels
    grey = lambda image: (image + 1).mul(127.5).mean(1).flatten(1)
    readable = ((grey(out) - grey(base)).abs() > 4).sum(1)
    assert (readable >= 40).all(), dict(zip(AU_CODES, readable.tolist()))


def test_render_is_deterministic_and_batch_independent():
    ids = torch.tensor([3, 4, 5])
    aus = emotion_aus(torch.tensor([1, 2, 3]), 3.0, ids)
    kw = dict(light="random", background="random", noise=0.02, seeds=torch.tensor([10, 11, 12]))
    a = render(ids, aus, torch.tensor([10.0, -20.0, 0.0]), 48, **kw)
    b = render(ids[1:], aus[1:], torch.tensor([-20.0, 0.0]), 48, **{**kw, "seeds": kw["seeds"][1:]})
    # layers vanish exactly outside their windows, so only float rounding can differ
    assert (a["image"][1:] - b["image"]).abs().max() < 1e-5
    assert (a["landmarks"][1:] - b["landmarks"]).abs().max() < 1e-4
    again = render(ids, aus, torch.tensor([10.0, -20.0, 0.0]), 48, **kw)
    assert torch.equal(a["image"], again["image"])


def _hash_uniform_int64(ids, count, salt=0):
    """The identity hash written plainly in int64 with explicit 32-bit masks (the reference)."""
    m32 = 0xFFFFFFFF
    x = ((ids.long()[:, None] & m32) * 0x9E3779B1 + torch.arange(count) * 0x85EBCA77 + salt * 0xC2B2AE3D) & m32
    for mult in (0x7FEB352D, 0x846CA68B, 0x2C1B3C6D):
        x = x ^ (x >> 16)
        x = (x * mult) & m32
    x = x ^ (x >> 15)
    return (x.double() / 2.0**32).float()


def test_int32_hash_equals_the_int64_reference_bit_for_bit():
    # identities, parameters, light, background and noise all come from this hash: the fast
    # int32 version (wrapping multiply, masked shifts) must give exactly the same numbers
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.randint(-2**62, 2**62, (300,), generator=g), torch.arange(-5, 5),
                     torch.tensor([2**31 - 1, 2**31, 2**32 - 1, 2**32, -2**31, -2**63])])
    for salt in (0, 101, 0xFFFFFF):
        fast = synth.hash_uniform(ids, 3001, salt=salt)
        assert torch.equal(fast, _hash_uniform_int64(ids, 3001, salt=salt))
        assert 0 <= float(fast.min()) and float(fast.max()) <= 1
    noise = synth._Draw(4, None, torch.tensor([1, 2, 3, 4])).normal((3, 40, 40), salt=103)
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05


def test_renders_match_the_golden_file_the_shipped_weights_were_trained_on():
    # tests/data/render_golden.npz was rendered by the renderer the shipped checkpoints were
    # trained with (float16). Speed work must not change the pixels, the landmarks or the flow.
    from pathlib import Path

    golden = np.load(Path(__file__).parent / "data" / "render_golden.npz")
    ids = torch.tensor([7, 123456, 42, 999, 31337, 5])
    aus = emotion_aus(torch.tensor([0, 4, 7, 9, 1, 5]), torch.tensor([0.0, 5.0, 3.5, 4.0, 5.0, 2.0]), ids)
    yaw = torch.tensor([0.0, 20.0, -35.0, 45.0, 0.0, -10.0])
    seeded = render(ids, aus, yaw, 48, light="random", background="random", noise=0.02, seeds=ids + 1)
    plain = render(ids, aus, None, 48)
    pair = render_pair(ids[:3], aus[3:], aus[:3], yaw[:3], 48, seeds=ids[:3])
    for name, now in (("seeded", seeded["image"]), ("plain", plain["image"]), ("pair_target", pair["target"])):
        diff = (now - torch.from_numpy(golden[name].astype(np.float32))).abs()
        assert float(diff.max()) < 2e-3 and float(diff.mean()) < 2e-4, name  # float16 steps are 1e-3
    assert (plain["landmarks"] - torch.from_numpy(golden["landmarks"])).abs().max() < 1e-3
    assert (pair["flow"] - torch.from_numpy(golden["pair_flow"].astype(np.float32))).abs().max() < 0.02
    assert float((pair["visible"].bool() != torch.from_numpy(golden["pair_visible"])).float().mean()) < 1e-3


def test_identities_differ_and_emotions_differ_per_identity():
    ids = torch.arange(6)
    neutral = render(ids, torch.zeros(6, NUM_AUS), None, 32)["image"]
    assert all((neutral[i] - neutral[j]).abs().mean() > 0.03 for i in range(6) for j in range(i))
    happy = emotion_aus("happy", 4.0, ids)
    assert not torch.allclose(happy[0], happy[1])          # per-identity gains
    assert torch.allclose(emotion_aus("happy", 4.0), torch.as_tensor(emotion_aus(5, 4.0)))
    assert torch.equal(emotion_aus("neutral", 5.0), torch.zeros(1, NUM_AUS))
    assert torch.allclose(emotion_aus("surprised", 2.5) * 2, emotion_aus("surprised", 5.0))
    contempt = synth.emotion_asymmetry("contemptuous", ids)
    assert (contempt[:, au_index(12)].abs() == 1).all()    # unilateral


def test_resolution_independence():
    ids = torch.tensor([2, 9])
    aus = emotion_aus(torch.tensor([5, 7]), 4.0, ids)
    small = render(ids, aus, torch.tensor([0.0, 25.0]), 64)["image"]
    large = render(ids, aus, torch.tensor([0.0, 25.0]), 256)["image"]
    down = F.avg_pool2d(large, 4)
    full = torch.ones_like(small[:, :1])
    assert masked_psnr(small, down, full).min() > 28.0


def test_masks_and_value_ranges():
    out = render(torch.tensor([0, 1]), torch.zeros(2, NUM_AUS), None, 32, background="gradient",
                 generator=torch.Generator().manual_seed(0))
    assert out["image"].shape == (2, 3, 32, 32) and out["image"].min() >= -1 and out["image"].max() <= 1
    face = out["face_mask"]
    assert face.shape == (2, 1, 32, 32) and 0.15 < face.mean() < 0.6
    assert (out["head_mask"] >= face - 1e-6).all()


@pytest.mark.parametrize("call, message", [
    (lambda: render(torch.tensor([0]), torch.full((1, NUM_AUS), 6.0)), "[0, 5.0]"),
    (lambda: render(torch.tensor([0]), torch.zeros(1, 16)), "[1, 17]"),
    (lambda: render(torch.tensor([0]), torch.zeros(1, NUM_AUS), torch.tensor([60.0])), "[-45.0, 45.0]"),
    (lambda: render(torch.tensor([0]), torch.zeros(1, NUM_AUS), size=3), "between 8 and 4096"),
    (lambda: render(torch.tensor([0]), torch.zeros(1, NUM_AUS), background="stripes"), "textured"),
    (lambda: emotion_aus("joy"), "surprised"),
    (lambda: emotion_aus("happy", 7.0), "[0, 5.0]"),
    (lambda: SynthFaces("celeba"), "multipie"),
    (lambda: SynthFaces("rafd", "training"), "'val'"),
    (lambda: SynthFaces("oulu", length=5), "sequences=True"),
])
def test_bad_input_raises_value_error_naming_valid_values(call, message):
    with pytest.raises(ValueError, match=None) as info:
        call()
    assert message in str(info.value)


def test_float_identity_is_a_type_error():
    with pytest.raises(TypeError, match="integer"):
        render(torch.tensor([0.5]), torch.zeros(1, NUM_AUS))


# ------------------------------------------------------------------------------------------ dataset
def test_splits_are_disjoint_within_and_across_presets():
    seen: dict[int, str] = {}
    for name, preset in PRESETS.items():
        for split in ("train", "val", "test"):
            ids = SynthFaces(name, split, size=16).identities
            assert len(ids) == preset.identities[split]
            for i in ids:
                assert i not in seen, f"identity {i} in {name}/{split} and {seen[i]}"
                seen[i] = f"{name}/{split}"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_dataset_items_match_the_contract(preset):
    data = SynthFaces(preset, "val", size=32)
    item = data[len(data) - 1]
    assert item["image"].shape == (3, 32, 32)
    assert item["aus"].shape == (NUM_AUS,) and item["identity"].dtype == torch.long
    assert item["emotion"].dtype == torch.long and 0 <= int(item["emotion"]) < len(EXPRESSIONS)
    assert int(item["identity"]) in data.identities
    assert set(data.expressions) <= set(EXPRESSIONS) and float(item["yaw"]) in get_preset(preset).yaws + (0.0,)
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)
    first = next(iter(loader))
    again = data.batch(range(4))
    assert all(torch.equal(first[key], again[key]) for key in again)


def test_pairs_and_sequences():
    pairs = SynthFaces("multipie", "train", size=32, pairs=True)
    assert len(pairs) == 270 * 6 * 5
    item = pairs[7]
    assert item["flow"].shape == (2, 32, 32) and item["visible"].shape == (1, 32, 32)
    assert item["source_emotion"] != item["target_emotion"]
    assert torch.equal(pairs[7]["target"], item["target"])
    seq = SynthFaces("oulu", "test", size=32, sequences=True, length=5)
    frames = seq[0]
    assert frames["frames"].shape == (5, 3, 32, 32)
    assert frames["aus"][0].abs().max() == 0 and frames["aus"][-1].max() >= 3.0
    oulu = SynthFaces("oulu", "test", size=32)
    assert len(oulu) == 8 * 6 * 3 and float(oulu[2]["intensity"]) > float(oulu[0]["intensity"])


def test_npz_cache_roundtrip(tmp_path):
    path = tmp_path / "rafd_val.npz"
    first = SynthFaces("rafd", "val", size=16, cache=path)
    assert path.exists()
    second = SynthFaces("rafd", "val", size=16, cache=path)
    live = SynthFaces("rafd", "val", size=16)
    for i in (0, len(live) - 1):
        assert (second[i]["image"] - live[i]["image"]).abs().max() < 1e-5
        assert torch.equal(first[i]["aus"], live[i]["aus"])
    with pytest.raises(ValueError, match="different dataset"):
        SynthFaces("rafd", "val", size=32, cache=path)


# ------------------------------------------------------------------------------------------ widget
def test_au_editor_rerenders_when_a_slider_moves():
    pytest.importorskip("ipywidgets")
    from facelib.widgets import au_editor

    box = au_editor(identity=4, size=48)
    before = box.image.value
    box.sliders[au_index(12)].value = 5.0
    assert box.image.value != before
    assert box.aus()[au_index(12)] == 5.0
    box.emotion.value = "surprised"
    assert box.aus()[au_index(26)] > 0 and box.aus()[au_index(12)] == 0
    assert np.frombuffer(box.image.value[:8], np.uint8).tolist() == [137, 80, 78, 71, 13, 10, 26, 10]


def test_keep_freed_memory_applies_once_and_honours_the_opt_out(monkeypatch):
    import os
    import platform
    import subprocess
    import sys

    from facelib import utils

    # in this process the renderer has already applied it (or found no glibc)
    expected = "tuned" if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" else "unavailable"
    render(torch.tensor([1]), torch.zeros(17), None, 16)
    assert utils.keep_freed_memory() == expected
    code = "import torch, facelib.data as d, facelib.utils as u; d.render(torch.tensor([1]), torch.zeros(17), None, 16); print(u.keep_freed_memory())"
    for value, want in (("system", "system"), ("tuned", expected)):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FACELIB_MALLOC": value},
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == want
    monkeypatch.setattr(utils, "_malloc_state", None)
    monkeypatch.setenv("FACELIB_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match="'tuned' or 'system'"):
        utils.keep_freed_memory()


def test_labels_match_the_rendered_items_without_rendering():
    from facelib.data import SynthFaces

    for pairs in (False, True):
        data = SynthFaces("rafd", "test", size=16, pairs=pairs)
        labels, items = data.labels([3, 11]), data.batch([3, 11])
        for key, value in labels.items():
            torch.testing.assert_close(value, items[key], msg=key)


def test_expression_aus_are_the_mean_ground_truth_aus_of_each_expression():
    from facelib.conventions import AU_CODES, EMOTIONS
    from facelib.data import SynthFaces, expression_aus

    means = expression_aus("rafd")
    assert list(means) == list(EMOTIONS) and all(v.shape == (17,) for v in means.values())
    labels = SynthFaces("rafd", "train", size=8).labels()
    happy = labels["aus"][labels["emotion"] == EMOTIONS.index("happy")].mean(0)
    torch.testing.assert_close(means["happy"], happy)
    assert float(means["neutral"].abs().max()) == 0.0
    assert means["happy"][AU_CODES.index(12)] > 3  # the lip corner puller of a smile


def test_across_expressions_cycles_through_the_expressions():
    from facelib.data import SynthFaces

    data = SynthFaces("multipie", "train", size=16)
    chosen = data.across_expressions(6)
    emotions = data.labels(chosen)["emotion"].tolist()
    assert len(chosen) == 6 and len(set(emotions)) == 6


def test_landmark_box_mask_covers_the_named_landmarks_and_little_else():
    from facelib.data import EYE_LANDMARKS, MOUTH_LANDMARKS, landmark_box_mask

    faces = render(torch.tensor([3, 4]), torch.zeros(17), torch.tensor([0.0, 30.0]), size=64)
    eyes = landmark_box_mask(faces["landmarks"], EYE_LANDMARKS, 64)
    mouth = landmark_box_mask(faces["landmarks"], MOUTH_LANDMARKS, 64, margin=0)
    assert eyes.shape == (2, 1, 64, 64) and set(eyes.unique().tolist()) == {0.0, 1.0}
    for name in EYE_LANDMARKS:
        x, y = faces["landmarks"][:, synth.LANDMARK_NAMES.index(name)].round().long().T
        assert (eyes[torch.arange(2), 0, y, x] == 1).all()
    assert (eyes * mouth).sum() == 0  # the eye box ends above the mouth's
    assert 0.02 < eyes.mean() < 0.2 and 0.005 < mouth.mean() < 0.1
    with pytest.raises(ValueError, match="unknown landmark names \\['eye_third'\\]; accepted: brow_left_outer"):
        landmark_box_mask(faces["landmarks"], ("eye_third",), 64)
    with pytest.raises(ValueError, match="landmarks must be"):
        landmark_box_mask(faces["landmarks"][:, :5], EYE_LANDMARKS, 64)
