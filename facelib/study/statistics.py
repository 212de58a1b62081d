"""The statistics of a study, the same for people's answers and simulated ones.

- :func:`filter_raters`: drop raters who fail the attention checks, and (FVAE Sec. 6.3) raters
  "performing below 50 % accuracy on the real images";
- :func:`real_or_fake_table`: per method, the proportion judged real with Wilson intervals
  (LEED Table 3 "Real or Fake", FVAE Table 2 "% labeled real");
- :func:`pairwise_comparisons`: every pair of methods, Fisher's exact test, Holm's correction;
- :func:`which_more_real_ranking`: LEED Table 3 "Which's More Real" (the share of first choices)
  and Bradley-Terry strengths fitted with Hunter's (2004) MM algorithm;
- :func:`agreement`: Fleiss' kappa between raters.

The answers table is :meth:`facelib.study.StudyDB.answers`. One caveat the papers share: the
tests treat every answer as independent, while answers of one rater are correlated (one rater
is stricter than another); with many raters and few trials each this matters little, and a
mixed-effects model is the tool when it does.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np
import pandas as pd

from .trials import REAL

__all__ = [
    "MIN_CHECK_ACCURACY", "MIN_REAL_ACCURACY", "wilson_interval", "rater_quality", "filter_raters",
    "real_or_fake_table", "pairwise_comparisons", "bradley_terry", "which_more_real_ranking", "agreement", "analyse",
]

#: Keep a rater who picks the real image in at least this share of the attention checks. Neither
#: LEED nor ExprGAN states a rule (ExprGAN reports no user study; LEED Sec. 4.2 gives none): this
#: is facelib's choice. With 6 checks a rater may miss one; someone clicking at random passes
#: 5 of 6 with probability 7/64.
MIN_CHECK_ACCURACY = 0.8
#: FVAE Sec. 6.3: "users performing below 50% accuracy on the real images are dropped".
MIN_REAL_ACCURACY = 0.5


def _require(answers: pd.DataFrame) -> pd.DataFrame:
    from .answers import ANSWER_COLUMNS

    if not isinstance(answers, pd.DataFrame) or set(ANSWER_COLUMNS) - set(answers.columns):
        raise ValueError(f"answers must be a DataFrame with the columns {ANSWER_COLUMNS} (StudyDB.answers())")
    return answers


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (statsmodels' ``proportion_confint(method="wilson")``)."""
    from statsmodels.stats.proportion import proportion_confint

    if n <= 0:
        return math.nan, math.nan
    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    return float(low), float(high)


def _real_image_answers(answers: pd.DataFrame) -> pd.DataFrame:
    rows = answers[answers["kind"] == "real_or_fake"]
    return rows[rows["shown"].map(lambda shown: shown[0] == REAL)]


def rater_quality(answers: pd.DataFrame, min_check_accuracy: float = MIN_CHECK_ACCURACY,
                  min_real_accuracy: float = MIN_REAL_ACCURACY) -> pd.DataFrame:
    """One row per rater: attention checks passed, real images judged real, kept or not and why."""
    answers = _require(answers)
    for name, value in (("min_check_accuracy", min_check_accuracy), ("min_real_accuracy", min_real_accuracy)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a share in [0, 1], got {value!r}")
    rows = []
    for rater, own in answers.groupby("rater", sort=True):
        checks = own[own["kind"] == "attention"]
        passed = int((checks["response"] == REAL).sum())
        real = _real_image_answers(own)
        judged_real = int((real["response"] == "real").sum())
        check_accuracy = passed / len(checks) if len(checks) else math.nan
        real_accuracy = judged_real / len(real) if len(real) else math.nan
        reasons = []
        if len(checks) and check_accuracy < min_check_accuracy:
            reasons.append(f"passed {passed} of {len(checks)} attention checks")
        if len(real) and real_accuracy < min_real_accuracy:
            reasons.append(f"judged {judged_real} of {len(real)} real images real")
        rows.append({"rater": rater, "answers": len(own), "checks": len(checks), "checks_passed": passed,
                     "check_accuracy": check_accuracy, "real_shown": len(real), "real_judged_real": judged_real,
                     "real_accuracy": real_accuracy, "kept": not reasons, "reason": "; ".join(reasons)})
    return pd.DataFrame(rows, columns=["rater", "answers", "checks", "checks_passed", "check_accuracy", "real_shown",
                                       "real_judged_real", "real_accuracy", "kept", "reason"])


def filter_raters(answers: pd.DataFrame, min_check_accuracy: float = MIN_CHECK_ACCURACY,
                  min_real_accuracy: float = MIN_REAL_ACCURACY) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(answers of the kept raters, rater_quality table)``. The attention checks themselves are
    left out of the returned answers: they measure raters, not methods."""
    quality = rater_quality(answers, min_check_accuracy, min_real_accuracy)
    kept = set(quality.loc[quality["kept"], "rater"])
    mask = answers["rater"].isin(kept) & (answers["kind"] != "attention")
    return answers[mask].reset_index(drop=True), quality


def real_or_fake_table(answers: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per method (and ``real``): answers, judged real, the proportion and its Wilson interval."""
    rows_in = _require(answers)
    rows_in = rows_in[rows_in["kind"] == "real_or_fake"]
    methods = rows_in["shown"].map(lambda shown: shown[0])
    rows = []
    for method in sorted(set(methods), key=lambda m: (m == REAL, m)):
        own = rows_in[methods == method]
        judged, n = int((own["response"] == "real").sum()), len(own)
        low, high = wilson_interval(judged, n, confidence)
        rows.append({"method": method, "n": n, "judged_real": judged, "proportion": judged / n,
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=["method", "n", "judged_real", "proportion", "ci_low", "ci_high"])


def pairwise_comparisons(answers: pd.DataFrame, correction: str = "holm", alpha: float = 0.05) -> pd.DataFrame:
    """Every pair of methods: is one judged real more often? Fisher's exact test on the 2x2 table of
    judged real / fake, p-values corrected for the number of pairs (``statsmodels`` ``multipletests``,
    Holm by default: it controls the family-wise error and is never worse than Bonferroni)."""
    from scipy.stats import fisher_exact
    from statsmodels.stats.multitest import multipletests

    table = real_or_fake_table(answers).set_index("method")
    rows = []
    for a, b in itertools.combinations(table.index, 2):
        counts = [[table.at[m, "judged_real"], table.at[m, "n"] - table.at[m, "judged_real"]] for m in (a, b)]
        rows.append({"method_a": a, "method_b": b, "proportion_a": table.at[a, "proportion"],
                     "proportion_b": table.at[b, "proportion"],
                     "difference": table.at[a, "proportion"] - table.at[b, "proportion"],
                     "p_value": float(fisher_exact(counts).pvalue)})
    result = pd.DataFrame(rows, columns=["method_a", "method_b", "proportion_a", "proportion_b", "difference", "p_value"])
    if len(result):
        reject, adjusted, _, _ = multipletests(result["p_value"], alpha=alpha, method=correction)
        result[f"p_{correction}"], result["significant"] = adjusted, reject
    return result


_GHOST = "\x00ghost"  # the virtual method of bradley_terry's prior (no label a study can use)


def bradley_terry(choices: Sequence[tuple[Sequence[str], str]], weights: Sequence[float] | None = None,
                  iterations: int = 10_000, tolerance: float = 1e-10, prior: float = 0.0) -> pd.Series:
    """Strengths ``s`` of the Bradley-Terry-Luce choice model, ``P(i picked from S) = s_i / sum_{j in S} s_j``.

    choices: ``(shown labels, picked label)`` per answer (two shown: Bradley-Terry's pairs; more:
    Luce's choice model, LEED's three side by side); ``weights``: how often each was seen (default 1).
    Fitted by maximum likelihood with the MM algorithm of Hunter (2004, Sec. 5), the
    generalisation of Zermelo's iteration: ``s_i <- w_i / sum_{t: i in S_t} 1 / sum_{j in S_t} s_j``,
    ``w_i`` the (weighted) number of times ``i`` was picked. Returned normalised to sum 1, so
    ``s_i`` is the chance of being picked when every method is shown together. A method never
    picked gets 0 (its maximum-likelihood strength); one the others never beat would go to
    infinity, which the normalisation turns into 1.

    ``prior`` > 0 adds a ghost method that every method beats ``prior`` times and loses to ``prior``
    times (virtual pairs, dropped from the result). The maximum-likelihood strengths exist only when
    every split of the methods has a win across it both ways (Hunter 2004, Assumption 1); with
    many methods and few trials, one method that was never beaten takes all the strength and the
    rest get 0. The ghost connects every method both ways, so the estimate always exists and a
    sparse design is pulled gently toward equal strengths.
    """
    weights = np.ones(len(choices)) if weights is None else np.asarray(weights, dtype=float)
    if len(choices) == 0 or len(weights) != len(choices):
        raise ValueError(f"bradley_terry needs one or more (shown, picked) choices and one weight each; got "
                         f"{len(choices)} choices, {len(weights)} weights")
    if not (isinstance(prior, (int, float)) and math.isfinite(prior) and prior >= 0):
        raise ValueError(f"bradley_terry: prior must be a finite number >= 0 (virtual wins and losses), got {prior!r}")
    labels = sorted({label for shown, _ in choices for label in shown})
    if prior > 0:  # fit with the ghost's virtual pairs, then drop it
        virtual = [((label, _GHOST), picked) for label in labels for picked in (label, _GHOST)]
        fitted = bradley_terry(list(choices) + virtual, np.concatenate([weights, np.full(len(virtual), float(prior))]),
                               iterations=iterations, tolerance=tolerance).drop(_GHOST)
        return fitted / fitted.sum()
    index = {label: i for i, label in enumerate(labels)}
    sets = np.zeros((len(choices), len(labels)))
    wins = np.zeros(len(labels))
    for t, ((shown, picked), weight) in enumerate(zip(choices, weights)):
        if picked not in shown or len(set(shown)) < 2:
            raise ValueError(f"choice {t}: the picked label {picked!r} must be one of two or more shown, {list(shown)}")
        sets[t, [index[label] for label in shown]] = 1.0
        wins[index[picked]] += weight
    strength = np.full(len(labels), 1.0 / len(labels))
    for _ in range(iterations):
        totals = sets @ strength  # [T]: sum of the strengths shown in each trial
        updated = wins / np.maximum((weights / totals) @ sets, 1e-300)
        updated /= updated.sum()
        converged = np.abs(updated - strength).max() < tolerance
        strength = updated
        if converged:
            break
    return pd.Series(strength, index=labels, name="strength")


def _first_choices(answers: pd.DataFrame) -> list[tuple[list[str], str]]:
    rows = answers[answers["kind"] == "which_more_real"]
    return list(zip(rows["shown"], rows["response"]))


def which_more_real_ranking(answers: pd.DataFrame, bootstrap: int = 200, confidence: float = 0.95,
                            seed: int = 0, prior: float = 1.0) -> pd.DataFrame:
    """LEED Table 3's "Which's More Real": per method, how often it was picked, and its Bradley-Terry
    strength with a percentile interval from resampling raters (``bootstrap`` times; 0: none).

    ``prior``: :func:`bradley_terry`'s virtual wins and losses against a ghost method, per method. With
    ten methods shown three at a time, some pairs never meet, and without it one method that was never
    beaten took all the strength (measured on notebook 08's simulated panel)."""
    answers = _require(answers)
    choices = _first_choices(answers)
    if not choices:
        raise ValueError("no which_more_real answers to rank (the study has none, or every rater was dropped)")
    strength = bradley_terry(choices, prior=prior)
    picked = pd.Series([p for _, p in choices]).value_counts().reindex(strength.index, fill_value=0)
    table = pd.DataFrame({"picked": picked, "share_picked": picked / len(choices), "strength": strength})
    raters = answers.loc[answers["kind"] == "which_more_real", "rater"].unique()
    draws = []
    rng = np.random.default_rng(seed)
    by_rater = {rater: _first_choices(answers[answers["rater"] == rater]) for rater in raters}
    for _ in range(bootstrap if len(raters) > 1 else 0):
        sample = [c for rater in rng.choice(raters, len(raters)) for c in by_rater[rater]]
        draws.append(bradley_terry(sample, iterations=2000, tolerance=1e-8, prior=prior)
                     .reindex(strength.index, fill_value=0.0))
    tail = (1 - confidence) / 2 * 100
    table["ci_low"] = np.percentile(draws, tail, axis=0) if draws else math.nan
    table["ci_high"] = np.percentile(draws, 100 - tail, axis=0) if draws else math.nan
    table = table.sort_values("strength", ascending=False)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.rename_axis("method").reset_index()


def agreement(answers: pd.DataFrame, kind: str = "real_or_fake") -> dict:
    """Fleiss' kappa (``statsmodels``) of the raters who answered every trial of ``kind``.

    Categories: ``real``/``fake``, or the method picked. Fleiss' kappa needs the same number of
    ratings per trial, hence complete raters only (the count is returned).
    """
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    if kind not in ("real_or_fake", "which_more_real"):
        raise ValueError(f"agreement is measured on 'real_or_fake' or 'which_more_real' answers, got {kind!r}")
    rows = _require(answers)
    rows = rows[rows["kind"] == kind]
    grid = rows.pivot_table(index="trial", columns="rater", values="response", aggfunc="first")
    complete = grid.dropna(axis=1)
    if complete.shape[1] < 2 or complete.shape[0] < 1:
        return {"kappa": math.nan, "trials": len(grid), "raters": int(complete.shape[1]),
                "note": "needs two or more raters who answered every trial"}
    categories = sorted(set(np.ravel(complete.to_numpy())))
    codes = complete.apply(lambda column: column.map({c: i for i, c in enumerate(categories)})).to_numpy()
    counts, _ = aggregate_raters(codes, n_cat=len(categories))
    return {"kappa": float(fleiss_kappa(counts, method="fleiss")), "trials": len(complete),
            "raters": int(complete.shape[1]), "note": f"categories {categories}"}


def analyse(answers: pd.DataFrame, bootstrap: int = 200, seed: int = 0) -> dict:
    """Everything above in one call, filtering first: ``quality``, ``real_or_fake``, ``pairwise``,
    ``ranking`` (``None`` without which-more-real answers) and ``agreement`` (Fleiss' kappa per kind)."""
    kept, quality = filter_raters(answers)
    if kept.empty:
        raise ValueError(f"every one of the {len(quality)} raters was dropped by the filter; see rater_quality(answers)")
    has_choices = bool((kept["kind"] == "which_more_real").any())
    return {
        "quality": quality, "kept": kept, "real_or_fake": real_or_fake_table(kept),
        "pairwise": pairwise_comparisons(kept),
        "ranking": which_more_real_ranking(kept, bootstrap=bootstrap, seed=seed) if has_choices else None,
        "agreement": pd.DataFrame({kind: agreement(kept, kind) for kind in ("real_or_fake", "which_more_real")}).T,
    }
