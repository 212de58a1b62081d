"""Edits of real photos, measured with the real-photo instruments (dlib descriptor, FER2013 classifier).

Models trained on SynthFaces alone do not transfer to real photos; this is where facelib says by
how much. An editor edits the aligned face crop (through ``Editor.edit_highres``, so a crop larger
than the editor's size is handled the way the method can do best), the edit is pasted back
into the photo, and both instruments measure the photo before and after.
"""
from __future__ import annotations

from ..align import align_face, detect_face, paste_back
from ..data.io import load_image
from ..editors import Editor, Target
from ..models.real import FER2013_NAME, fer_probabilities, identity_distance

__all__ = ["measure_real_edits"]


def measure_real_edits(photos: dict, editor: Editor | None, expressions, *, size: int = 256, intensity: float = 1.0):
    """Edit real photos toward each of ``expressions`` and measure each edit with the real instruments.

    photos: name -> anything :func:`facelib.data.load_image` reads. ``editor``: any editor that
    accepts expression targets, or ``None`` for the floor (the unedited crop pasted back: what
    alignment and paste-back alone change). Each photo: its largest face is aligned at ``size``
    (dlib), edited with ``Target(expression=e, intensity=intensity)``, pasted back
    (:func:`~facelib.align.paste_back`), and the FER2013 probability of the target is measured in
    the same face box before and after, with the dlib descriptor distance from the photo to the
    edited photo (dlib's "same person" threshold is 0.6).

    Returns ``(table, edited)``: a DataFrame with one row per photo and expression (photo, target,
    fer_class, p_before, p_after, top_before, top_after, identity_distance) and a dict
    ``(photo, expression) -> uint8`` edited photo.
    """
    import pandas as pd

    unknown = [e for e in expressions if e not in FER2013_NAME]
    if unknown:
        raise ValueError(f"expressions {unknown} have no FER2013 class; measurable: {', '.join(FER2013_NAME)}")
    if editor is not None and "expression" not in editor.accepts:
        raise ValueError(f"{editor.name} does not accept expression targets (it accepts {list(editor.accepts)})")
    rows, edited = [], {}
    for name, photo in photos.items():
        rgb = load_image(photo)
        face = align_face(rgb, size, detection=detect_face(rgb))
        box = face.box
        before = fer_probabilities(rgb, box)
        for expression in expressions:
            crop = face.tensor()  # [1, 3, size, size] in [-1, 1]
            if editor is not None:
                crop = editor.edit_highres(crop, Target(expression=expression, intensity=intensity)).output
            result = paste_back(rgb, crop, face)
            after = fer_probabilities(result, box)
            fer_class = FER2013_NAME[expression]
            rows.append({"photo": name, "target": expression, "fer_class": fer_class,
                         "p_before": before[fer_class], "p_after": after[fer_class],
                         "top_before": max(before, key=before.get), "top_after": max(after, key=after.get),
                         "identity_distance": identity_distance(rgb, result, box)})
            edited[name, expression] = result
    return pd.DataFrame(rows), edited
