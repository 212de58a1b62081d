"""EGGAN's measurements (Tang et al. 2020, Sec. 4.2-4.3) for notebook 06, on SynthFaces' rafd preset.

- :func:`table1_pairs` and :func:`table1`: Table 1's protocol, per-AU MSE and PCC between the AU
  regressor's reading of the edits and the target AUs, for several editors and for the real target
  faces: targets are training faces of the 8 expressions (their true AUs), sources test people.
- :func:`interpolation` (Fig. 3): edits along Eq. 8's line, alpha from 0 to 1.
- :func:`single_au_control` (beyond the paper): one AU moved from 0 to 5 with the others held, the AU
  measured on the edits against the requested value (slope), and the leakage into the other AUs, beside
  the same sweep rendered by SynthFaces (the instrument's own ceiling).

Table 2 (identity verification, source against edit) is a row of :func:`facelib.evaluation.evaluate`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from facelib.conventions import AU_CODES, AU_MAX, EXPRESSIONS
from facelib.editors import Editor, Target
from facelib.metrics import au_mse_pcc

__all__ = ["Table1Pairs", "table1_pairs", "table1", "interpolation", "interpolation_progress", "single_au_control", "SINGLE_AUS",
           "ALPHAS"]

PRESET = "rafd"
#: The AUs of the single-AU sweep: smile (AU12), brow lowerer (AU4), blink (AU45).
SINGLE_AUS = ("AU12", "AU4", "AU45")
#: Fig. 3's alphas (Eq. 8).
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Table1Pairs:
    """Sources (test people) and targets (training faces of the 8 expressions, with their true AUs)."""

    source: torch.Tensor  # [N, 3, S, S]
    source_identity: torch.Tensor  # [N]
    source_yaw: torch.Tensor  # [N]
    source_emotion: torch.Tensor  # [N]
    target: torch.Tensor  # [N, 3, S, S]: the training faces whose AUs are the targets
    target_aus: torch.Tensor  # [N, 17] on the 0-5 scale
    target_emotion: torch.Tensor  # [N]

    @property
    def count(self) -> int:
        return len(self.source)


def table1_pairs(n: int = 256, size: int = 64, seed: int = 0) -> Table1Pairs:
    """``n`` (source, target) pairs for Table 1: targets evenly over rafd's training faces (all 8 expressions,
    the paper's 1,392 targets), each with a source drawn from rafd's test people in the same pose."""
    from facelib.data import SynthFaces

    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int of at least 2 (a correlation needs two), got {n!r}")
    train, test = SynthFaces(PRESET, "train", size=size, seed=0), SynthFaces(PRESET, "test", size=size, seed=0)
    generator = torch.Generator().manual_seed(seed)
    targets = train.batch(torch.randperm(len(train), generator=generator)[:n].sort().values)
    test_labels = test.labels()
    picks = []
    for yaw in targets["yaw"]:  # a test face in the same pose: an edit changes the expression, not the pose
        same_pose = torch.nonzero(test_labels["yaw"] == yaw).flatten()
        picks.append(int(same_pose[torch.randint(len(same_pose), (1,), generator=generator)]))
    sources = test.batch(torch.tensor(picks))
    return Table1Pairs(sources["image"], sources["identity"].long(), sources["yaw"].float(), sources["emotion"].long(),
                       targets["image"], targets["aus"].float(), targets["emotion"].long())


def _target(editor: Editor, pairs: Table1Pairs, index: torch.Tensor) -> Target:
    known = {"identity": pairs.source_identity[index], "yaw": pairs.source_yaw[index]}
    if "aus" in editor.accepts:
        return Target(aus=pairs.target_aus[index], known=known)
    sources = [EXPRESSIONS[int(k)] for k in pairs.source_emotion[index]]
    # the source's expression where the editor knows every one (FVAE's Algorithm 1 uses it), else unknown
    known_sources = sources if set(sources) <= set(editor.expressions) else None
    return Target(expression=[EXPRESSIONS[int(k)] for k in pairs.target_emotion[index]],
                  source_expression=known_sources, known=known)


@torch.no_grad()
def table1(editors: dict[str, Editor], pairs: Table1Pairs, regressor: torch.nn.Module | None = None,
           batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """EGGAN Table 1: MSE and PCC per AU (rows AU1 ... AU45, Avg) for each editor and for the real targets.

    An editor that accepts ``aus`` targets gets the target's AUs; one that accepts ``expression`` targets
    only gets the target's expression name (the paper compares StarGAN so), on the pairs whose expression it
    knows (``n`` says how many). Columns: ``(method, "MSE" | "PCC")``; ``.attrs["n"]`` the pairs per method.
    """
    from facelib.checkpoint import load_pretrained

    if not editors or not all(isinstance(e, Editor) for e in editors.values()):
        raise TypeError("editors must be a non-empty dict of name -> facelib Editor")
    for name, editor in editors.items():
        if not {"aus", "expression"} & set(editor.accepts):
            raise ValueError(f"{name} accepts {list(editor.accepts)}; Table 1 needs 'aus' or 'expression' targets")
    regressor = (regressor or load_pretrained("au_regressor")).eval()
    tables, counts = {}, {}
    for name, editor in tqdm(editors.items(), desc="Table 1", disable=not progress, leave=False):
        known = set(editor.expressions)
        usable = torch.tensor([("aus" in editor.accepts) or EXPRESSIONS[int(k)] in known for k in pairs.target_emotion])
        index = torch.nonzero(usable).flatten()
        readings = []
        for start in range(0, len(index), batch_size):
            chunk = index[start:start + batch_size]
            edited = editor.edit(pairs.source[chunk], _target(editor, pairs, chunk)).output
            readings.append(regressor(edited).clamp(0, AU_MAX))
        tables[name] = au_mse_pcc(torch.cat(readings), pairs.target_aus[index])
        counts[name] = len(index)
    real = torch.cat([regressor(pairs.target[s:s + batch_size]).clamp(0, AU_MAX)
                      for s in range(0, pairs.count, batch_size)])
    tables["Real"], counts["Real"] = au_mse_pcc(real, pairs.target_aus), pairs.count
    table = pd.concat(tables, axis=1)
    table.attrs["n"] = counts
    return table


@torch.no_grad()
def interpolation(editor: Editor, sources: torch.Tensor, target_aus: torch.Tensor,
                  alphas=ALPHAS) -> torch.Tensor:
    """EGGAN Fig. 3: each source edited at every alpha of Eq. 8 toward its target AUs, ``[N * len(alphas), 3, S, S]``
    row by row (one source per row)."""
    if "aus" not in editor.accepts:
        raise ValueError(f"{editor.name} does not accept aus targets; Fig. 3 moves along the AUs")
    columns = [editor.edit(sources, Target(aus=target_aus, intensity=float(a))).output for a in alphas]
    return torch.stack(columns, 1).flatten(0, 1)


@torch.no_grad()
def single_au_control(editors: dict[str, Editor], sources: dict[str, torch.Tensor], aus=SINGLE_AUS,
                      values=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0), regressor: torch.nn.Module | None = None,
                      true_render: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Move one AU from 0 to 5 holding the other 16 at the source's own (true) values; read all 17 on the edits.

    ``sources``: a SynthFaces batch (``image``, ``aus``, ``identity``, ``yaw``); ``true_render`` adds the same
    sweep rendered by SynthFaces (what the instrument reads on a perfect edit). Returns ``(curves, summary)``:
    curves has one row per method, AU and requested value with the mean measured value of that AU and the mean
    absolute change of the other 16 from the value-0 edit (``leakage``); summary one row per method and AU with
    the slope and intercept of measured against requested (least squares over every face) and the mean leakage
    at 5.
    """
    from facelib.checkpoint import load_pretrained
    from facelib.data import render

    regressor = (regressor or load_pretrained("au_regressor")).eval()
    for au in aus:
        if au not in [f"AU{code}" for code in AU_CODES]:
            raise ValueError(f"unknown AU {au!r}; the AUs are {[f'AU{c}' for c in AU_CODES]}")
    base = sources["aus"].float()
    methods = dict(editors)
    rows, summary = [], []
    for au in aus:
        k = [f"AU{code}" for code in AU_CODES].index(au)
        others = [j for j in range(len(AU_CODES)) if j != k]
        for name in list(methods) + (["true render"] if true_render else []):
            readings = []
            for value in values:
                wanted = base.clone()
                wanted[:, k] = value
                if name == "true render":
                    images = render(sources["identity"], wanted, sources["yaw"], size=sources["image"].shape[-1])["image"]
                else:
                    images = methods[name].edit(sources["image"], Target(aus=wanted)).output
                readings.append(regressor(images).clamp(0, AU_MAX))
            readings = torch.stack(readings)  # [V, N, 17]
            for v, value in enumerate(values):
                rows.append({"method": name, "AU": au, "requested": value, "measured": float(readings[v, :, k].mean()),
                             "leakage": float((readings[v][:, others] - readings[0][:, others]).abs().mean())})
            requested = np.repeat(np.asarray(values, dtype=float), readings.shape[1])
            slope, intercept = np.polyfit(requested, readings[:, :, k].flatten().double().numpy(), 1)
            summary.append({"method": name, "AU": au, "slope": float(slope), "intercept": float(intercept),
                            "leakage at 5": rows[-1]["leakage"]})
    return pd.DataFrame(rows), pd.DataFrame(summary)


@torch.no_grad()
def interpolation_progress(editor: Editor, sources: torch.Tensor, target_aus: torch.Tensor, alphas=ALPHAS,
                           regressor: torch.nn.Module | None = None) -> pd.DataFrame:
    """How far along Eq. 8's line the edits are, as the AU regressor reads them: for each alpha, the mean over
    faces of ``<r(edit) - r(source), u_t - u_i> / |u_t - u_i|^2`` (0 at the source's AUs, 1 at the target's,
    u_i read by the same regressor), and the mean AU error against the requested ``u_i + alpha (u_t - u_i)``."""
    from facelib.checkpoint import load_pretrained

    regressor = (regressor or load_pretrained("au_regressor")).eval()
    start = regressor(sources).clamp(0, AU_MAX)
    direction = target_aus.to(start) - start
    rows = []
    for alpha in alphas:
        measured = regressor(editor.edit(sources, Target(aus=target_aus, intensity=float(alpha))).output).clamp(0, AU_MAX)
        progress = ((measured - start) * direction).sum(1) / direction.square().sum(1).clamp_min(1e-6)
        rows.append({"alpha": float(alpha), "progress": float(progress.mean()),
                     "AU MAE vs requested": float((measured - (start + alpha * direction)).abs().mean())})
    return pd.DataFrame(rows)
