"""Photo editor (notebook 09) redraw latency on a 1080p photo: is a slider move under 200 ms on 2 cores?

The wheels ship no 1080p photo, so one is made: matplotlib's Grace Hopper (512x600) enlarged
to 1080 pixels high (bicubic) and set in a 1920x1080 frame (edges repeated). Her face is then
about 340 pixels wide, as in a portrait taken with a phone. Faces are found once, when the
photo is opened (timed separately); a redraw is what a slider move waits for:

- ``edit``: ``editor.edit_highres`` on the 256x256 aligned crop (the model at 64x64, its flow
  upsampled, or its output enlarged);
- ``paste``: ``facelib.align.paste_back`` into the whole 1920x1080 photo;
- ``show``: the preview of the edited photo (JPEG) and the crop tiles (PNG) the page shows.

Once the slider rests the editor also encodes the whole edited photo as the download (PNG,
``download``); a slider moved again during that waits for it, so ``worst`` = redraw + download.
Every value is the median over slider positions, after a warm-up, in one run, through the
widget itself (``photo_editor(..., background=False)``: each callback draws before returning).

    python benchmarks/bench_photo_editor.py [--threads 2] [--moves 30]
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

import facelib
from facelib.photo import sample_photos
from facelib.widgets import download_link, photo_editor

TARGET_MS = 200.0


def photo_1080p() -> np.ndarray:
    hopper = sample_photos()["Grace Hopper (matplotlib)"]()
    scale = 1080 / hopper.shape[0]
    enlarged = cv2.resize(hopper, (round(hopper.shape[1] * scale), 1080), interpolation=cv2.INTER_CUBIC)
    left = (1920 - enlarged.shape[1]) // 2
    return cv2.copyMakeBorder(enlarged, 0, 0, left, 1920 - enlarged.shape[1] - left, cv2.BORDER_REPLICATE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--moves", type=int, default=30, help="slider positions timed per method")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    facelib.set_seed(0)
    photo = photo_1080p()

    start = time.perf_counter()
    editor = photo_editor(photo, background=False)
    print(f"photo {photo.shape[1]}x{photo.shape[0]}, face box {editor.session.faces[0].box}; opening it "
          f"(read, find faces, first edit): {1000 * (time.perf_counter() - start):.0f} ms; threads {args.threads}")
    print(f"{'method':16s} {'edit':>6s} {'paste':>6s} {'show':>6s} {'redraw':>7s} {'callback':>9s} "
          f"{'download':>9s} {'worst':>6s}   (median ms; target: redraw <= {TARGET_MS:.0f})")
    for name in editor.method.options:
        editor.method.value = name
        controls = editor.controls
        if controls.kind.value == "reference":
            controls.reference.value = "SynthFaces, happy"
        low, high = controls.intensity.min, controls.intensity.max
        positions = np.linspace(low, high, args.moves + 3)
        stages, callbacks, downloads = [], [], []
        for step, value in enumerate(positions):
            begin = time.perf_counter()
            controls.intensity.value = float(value)  # the slider's callback: draws before it returns
            callback = 1000 * (time.perf_counter() - begin)
            begin = time.perf_counter()
            download_link(editor.last.photo, "x.png")
            download = 1000 * (time.perf_counter() - begin)
            if step >= 3:  # warm-up
                stages.append(editor.last.milliseconds)
                callbacks.append(callback)
                downloads.append(download)
        median = {stage: float(np.median([row[stage] for row in stages])) for stage in ("edit", "paste", "show")}
        redraw = float(np.median([sum(row.values()) for row in stages]))
        download = float(np.median(downloads))
        print(f"{name:16s} {median['edit']:6.1f} {median['paste']:6.1f} {median['show']:6.1f} {redraw:7.1f} "
              f"{np.median(callbacks):9.1f} {download:9.1f} {redraw + download:6.1f}   "
              f"{'meets' if redraw <= TARGET_MS else 'MISSES'} the {TARGET_MS:.0f} ms target")
    print("callback = the whole slider callback with background=False (redraw + the download link, "
          "which the background mode builds only once the slider rests)")

    # A slider dragged continuously: the browser reports ~60 positions a second. In the background
    # mode the callbacks only mark the picture stale; how many redraws run, and how long after the
    # last position its picture is shown (the positions in between are skipped, not queued).
    live = photo_editor(photo, method="fvae", background=True)
    live.redraws.wait()
    runs, positions = live.redraws.runs, np.linspace(0.0, 2.0, 120)
    for value in positions:
        live.controls.intensity.value = float(value)
        time.sleep(1 / 60)
    last = time.perf_counter()
    live.redraws.wait()
    settle = 1000 * (time.perf_counter() - last)
    shown = live.controls.target().intensities(1).item()
    print(f"continuous drag, fvae: {len(positions)} positions in {len(positions) / 60:.1f} s -> "
          f"{live.redraws.runs - runs} redraws; the last position ({shown:.2f}) shown {settle:.0f} ms after it "
          f"arrived (its redraw and the download PNG)")


if __name__ == "__main__":
    main()
