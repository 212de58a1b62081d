"""One interface for every expression-editing method: ``Target``, ``Editor``, ``EditResult``.

Every method in facelib, paper or baseline, is an :class:`Editor`; the evaluation protocol,
the benchmark and the widgets only ever talk to this interface::

    import facelib
    from facelib.editors import Target

    editor = facelib.load_editor("fvae")                       # shipped weights, ready to edit
    result = editor.edit(images, Target(expression="happy"))   # images [B, 3, 64, 64] in [-1, 1]
    result.output                                              # [B, 3, 64, 64] in [-1, 1]
    result.flow                                                # FVAE's flow; None for pixel methods

A target says what the face should show, in one of three kinds an editor may accept:

- ``expression``: a name from ``facelib.EXPRESSIONS`` (or one per image) with an ``intensity``
  (0 = the source, 1 = the expression; some editors go below 0 to suppress or above 1 to
  magnify: ``editor.intensity_range``);
- ``aus``: 17 action-unit intensities ``[B, 17]`` in ``[0, 5]`` (``facelib.AU_CODES`` order);
  :func:`facelib.data.expression_aus` gives each expression's mean AUs;
- ``reference``: images ``[B, 3, H, W]`` whose expression is to be copied, at ``intensity``.

A target the editor does not accept, or images of the wrong size or range, raise a
``ValueError`` naming what this editor accepts; an editor never resizes silently
(``facelib.conventions.check_images(..., size=editor.image_size, resize=True)`` resizes when
asked). Editing is deterministic and runs without gradients.

A new method is added by writing its model file (with an ``Editor`` subclass) and one
:func:`register_editor` line; ``tests/test_editor_contract.py`` then covers it.
"""
from __future__ import annotations

import dataclasses
import importlib
import numbers
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from .conventions import AU_MAX, EXPRESSIONS, NUM_AUS, check_images

__all__ = [
    "TARGET_KINDS", "KNOWN_FIELDS", "Target", "EditResult", "Editor", "EditorInfo",
    "register_editor", "list_editors", "load_editor", "editor_info",
]

#: The kinds of target an editor may accept.
TARGET_KINDS = ("expression", "aus", "reference")
#: What ``Target.known`` may carry about SynthFaces images (the render parameters oracle editors read).
KNOWN_FIELDS = ("identity", "yaw", "reference_identity", "reference_yaw")


def _names(value, what: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names:
        raise ValueError(f"{what} is empty; give a name from facelib.EXPRESSIONS or one per image")
    for name in names:
        if not isinstance(name, str) or name not in EXPRESSIONS:
            raise ValueError(f"unknown {what} {name!r}; valid expressions are {list(EXPRESSIONS)}")
    return names


@dataclass(frozen=True)
class Target:
    """What an edited face should show: exactly one of ``expression``, ``aus`` or ``reference``.

    expression: a name from ``facelib.EXPRESSIONS``, or a sequence of one name per image.
    intensity: a number or one per image: 0 leaves the source, 1 is the full expression (or the
        reference's expression); the editor's ``intensity_range`` says what else it accepts.
    aus: ``[B, 17]`` (or ``[17]``, the same for every image) AU intensities in ``[0, 5]``.
    reference: ``[B, 3, H, W]`` images in ``[-1, 1]`` at the editor's size, one per source.
    source_expression: the source's expression where it is known (a name or one per image). FVAE's
        Algorithm 1 moves along Z_target - Z_source and uses it; other editors ignore it. ``None``:
        unknown (a user's photo), and an editor that needs it says what it assumes.
    known: what the renderer knows about SynthFaces images, for *oracle* editors only: ``identity`` and
        ``yaw`` ``[B]`` of the sources and, for a reference target, ``reference_identity`` and
        ``reference_yaw``. LEED's ``true_render`` neutraliser renders the neutral faces from them
        (``facelib.models.leed``); every other editor ignores them. A photo has none.
    """

    expression: str | Sequence[str] | None = None
    intensity: float | Sequence[float] | torch.Tensor = 1.0
    aus: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    source_expression: str | Sequence[str] | None = None
    known: Mapping[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        given = [kind for kind in TARGET_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"a Target needs exactly one of {list(TARGET_KINDS)}, got {given or 'none'}")
        if self.expression is not None:
            object.__setattr__(self, "expression", _names(self.expression, "expression"))
        if self.source_expression is not None:
            object.__setattr__(self, "source_expression", _names(self.source_expression, "source_expression"))
        if self.aus is not None:
            aus = self.aus
            if not isinstance(aus, torch.Tensor) or not aus.is_floating_point():
                raise TypeError(f"aus must be a float torch.Tensor [B, {NUM_AUS}] in [0, {AU_MAX:g}], "
                                f"got {type(aus).__name__}")
            aus = aus.unsqueeze(0) if aus.dim() == 1 else aus
            if aus.dim() != 2 or aus.shape[1] != NUM_AUS:
                raise ValueError(f"aus must have shape [B, {NUM_AUS}] (facelib.AU_CODES order), got {list(self.aus.shape)}")
            if not torch.isfinite(aus).all() or float(aus.min()) < 0 or float(aus.max()) > AU_MAX:
                raise ValueError(f"aus must be finite intensities in [0, {AU_MAX:g}], got values in "
                                 f"[{float(aus.min()):.3g}, {float(aus.max()):.3g}]")
            object.__setattr__(self, "aus", aus)
        if self.known is not None:
            if not isinstance(self.known, Mapping) or not all(
                    name in KNOWN_FIELDS and isinstance(value, torch.Tensor) and value.dim() == 1
                    for name, value in self.known.items()):
                raise ValueError(f"known must map names from {list(KNOWN_FIELDS)} to 1-D tensors (one value per "
                                 f"image), got {self.known!r}")
            object.__setattr__(self, "known", dict(self.known))
        intensity = self.intensity
        if isinstance(intensity, bool) or not isinstance(intensity, (numbers.Real, torch.Tensor, Sequence)):
            raise TypeError(f"intensity must be a number or one number per image, got {type(intensity).__name__}")
        values = torch.as_tensor(intensity, dtype=torch.float32).reshape(-1)
        if values.numel() == 0 or not torch.isfinite(values).all():
            raise ValueError(f"intensity must be finite numbers, got {intensity!r}")

    @property
    def kind(self) -> str:
        """``"expression"``, ``"aus"`` or ``"reference"``."""
        return next(kind for kind in TARGET_KINDS if getattr(self, kind) is not None)

    @staticmethod
    def _per_image(values: Sequence, batch: int, what: str) -> list:
        if len(values) == 1:
            return list(values) * batch
        if len(values) != batch:
            raise ValueError(f"{what} has {len(values)} entries for {batch} images; give one, or one per image")
        return list(values)

    def expressions(self, batch: int) -> list[str]:
        """The target expression of each of ``batch`` images."""
        return self._per_image(self.expression, batch, "expression")

    def source_expressions(self, batch: int) -> list[str] | None:
        """The known source expression of each image, or ``None`` where unknown."""
        if self.source_expression is None:
            return None
        return self._per_image(self.source_expression, batch, "source_expression")

    def intensities(self, batch: int) -> torch.Tensor:
        """The intensity of each image, ``[batch]`` float32."""
        values = torch.as_tensor(self.intensity, dtype=torch.float32).reshape(-1)
        return torch.stack(self._per_image(list(values), batch, "intensity"))

    def au_targets(self, batch: int) -> torch.Tensor:
        """The AU target of each image, ``[batch, 17]``."""
        return self.aus.expand(batch, -1) if len(self.aus) == 1 else torch.stack(self._per_image(list(self.aus), batch, "aus"))


@dataclass
class EditResult:
    """What an edit returns: ``output`` ``[B, 3, H, W]`` in ``[-1, 1]``, plus the extras a method has.

    flow: backward pixel flow ``[B, 2, H, W]`` (FVAE, DFT-Net). aligned: the source warped along
    that flow, before any texture is blended in (DFT-Net's X_a). attention: mask ``[B, 1, H, W]`` in
    ``[0, 1]`` (GANimation, DFT-Net). texture: the colour image the attention blends in
    (GANimation, DFT-Net). latent: the code the output was decoded from (FVAE's Z_edit, ...).
    """

    output: torch.Tensor
    flow: torch.Tensor | None = None
    aligned: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    texture: torch.Tensor | None = None
    latent: torch.Tensor | None = None

    def extras(self) -> dict[str, torch.Tensor]:
        """The optional outputs this method produced, by name."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name != "output" and getattr(self, field.name) is not None}


class Editor:
    """The interface every method implements (subclass it and define :meth:`_edit`).

    Class or instance attributes: ``name`` (its :func:`load_editor` name), ``paper`` (the paper and
    the section it follows), ``accepts`` (a subset of :data:`TARGET_KINDS`), ``image_size`` (the
    square side it edits at), ``expressions`` (the expression names it can edit to, for
    ``expression`` targets), ``intensity_range`` (the intensities it is meant for).
    ``modules()`` returns its networks (for ``to(device)`` and eval mode).
    """

    name: str = ""
    paper: str = ""
    accepts: tuple[str, ...] = ()
    image_size: int = 64
    expressions: tuple[str, ...] = ()
    intensity_range: tuple[float, float] = (0.0, 1.0)

    def modules(self) -> dict[str, torch.nn.Module]:
        """The networks this editor runs (none for a non-learned baseline)."""
        return {}

    @property
    def device(self) -> torch.device:
        params = [p for module in self.modules().values() for p in module.parameters()]
        params += [b for module in self.modules().values() for b in module.buffers()]
        return params[0].device if params else torch.device("cpu")

    def to(self, device: str | torch.device) -> "Editor":
        """Move the editor's networks to ``device``; returns the editor."""
        from .utils import get_device

        device = get_device(device)
        for module in self.modules().values():
            module.to(device)
        return self

    def describe(self) -> str:
        """One line: name, paper, accepted targets, size."""
        return f"{self.name}: {self.paper}; accepts {', '.join(self.accepts)}; {self.image_size}x{self.image_size}"

    def check_target(self, target: Target, batch: int) -> Target:
        """Refuse a target this editor cannot follow, naming what it accepts."""
        if not isinstance(target, Target):
            raise TypeError(f"target must be a facelib.editors.Target, got {type(target).__name__}; "
                            f"{self.name} accepts {self._accepted()}")
        if target.kind not in self.accepts:
            raise ValueError(f"{self.name} does not accept {target.kind} targets; it accepts {self._accepted()}")
        intensities = target.intensities(batch)
        low, high = self.intensity_range
        if target.kind != "aus" and (float(intensities.min()) < low or float(intensities.max()) > high):
            raise ValueError(f"{self.name} accepts intensities in [{low:g}, {high:g}], got "
                             f"[{float(intensities.min()):g}, {float(intensities.max()):g}]")
        if target.kind == "expression":
            for name in target.expressions(batch):
                if name not in self.expressions:
                    raise ValueError(f"{self.name} cannot edit to {name!r}; it knows the expressions {list(self.expressions)}")
        if target.kind == "aus":
            target.au_targets(batch)
        if target.kind == "reference":
            reference = check_images(target.reference, "reference", size=self.image_size)
            if len(reference) != batch:
                raise ValueError(f"reference has {len(reference)} images for {batch} sources; give one per source")
        target.source_expressions(batch)
        return target

    def _accepted(self) -> str:
        kinds = []
        for kind in self.accepts:
            if kind == "expression":
                kinds.append(f"expression ({', '.join(self.expressions)}; intensity in "
                             f"[{self.intensity_range[0]:g}, {self.intensity_range[1]:g}])")
            elif kind == "aus":
                kinds.append(f"aus [B, {NUM_AUS}] in [0, {AU_MAX:g}]")
            else:
                kinds.append(f"reference [B, 3, {self.image_size}, {self.image_size}] in [-1, 1]")
        return "; ".join(kinds) + f"; images [B, 3, {self.image_size}, {self.image_size}] in [-1, 1]"

    @torch.no_grad()
    def edit(self, images: torch.Tensor, target: Target) -> EditResult:
        """Edit ``images`` ``[B, 3, image_size, image_size]`` in ``[-1, 1]`` toward ``target``.

        Runs on the editor's device (inputs are moved there); the result is on the images' device.
        """
        try:
            images = check_images(images, "images", size=self.image_size)
        except ValueError as err:
            raise ValueError(f"{err}. {self.name} accepts {self._accepted()}") from None
        target = self.check_target(target, len(images))
        home, device = images.device, self.device
        if target.reference is not None:
            target = dataclasses.replace(target, reference=target.reference.to(device))
        if target.aus is not None:
            target = dataclasses.replace(target, aus=target.aus.to(device))
        states = {name: module.training for name, module in self.modules().items()}
        for module in self.modules().values():
            module.eval()
        try:
            result = self._edit(images.to(device), target)
        finally:
            for name, module in self.modules().items():
                module.train(states[name])
        return EditResult(**{name: None if value is None else value.to(home)
                             for name, value in dataclasses.asdict(result).items()})

    @torch.no_grad()
    def edit_highres(self, images: torch.Tensor, target: Target) -> EditResult:
        """Edit faces larger than ``image_size`` (e.g. an aligned 256x256 photo crop).

        The faces are shrunk (area) to ``image_size`` and edited there. A method with a flow
        (FVAE, the flow baselines, DFT-Net) then has its flow upsampled (vectors rescaled with the
        size) and applied to the large face itself, so the face keeps its detail (FVAE Sec. 4.3);
        a pixel method's output is enlarged (bicubic): FVAE Fig. 7's comparison.
        ``result.flow`` stays at ``image_size``.
        """
        from .evaluation.fvae import pixel_upsample
        from .warp import upsample_flow, warp

        images = check_images(images, "images")
        result = self.edit(check_images(images, "images", size=self.image_size, resize=True), target)
        if result.flow is not None:
            # FVAE Sec. 4.3: a flow field is not tied to one resolution; sample the large face along it
            output = warp(images, upsample_flow(result.flow, tuple(images.shape[-2:])))
        else:
            output = pixel_upsample(result.output, images.shape[-1])
        return dataclasses.replace(result, output=output)

    def _edit(self, images: torch.Tensor, target: Target) -> EditResult:
        raise NotImplementedError(f"{type(self).__name__} must define _edit(images, target) -> EditResult")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


# ----------------------------------------------------------------------------------------
# the registry: name -> how to build a ready editor
# ----------------------------------------------------------------------------------------
_TARGET = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class EditorInfo:
    """What :func:`list_editors` shows of a registered editor, known without importing its model code."""

    name: str
    paper: str
    accepts: tuple[str, ...]
    weights: tuple[str, ...]  # the shipped checkpoints (``facelib.load_pretrained`` names) it loads
    factory: str | Callable  # "module:function" (or the function) returning a ready Editor
    #: the issue's floors on its first checkpoint's manifest metrics: metric -> (lowest, highest), None = open
    floors: tuple[tuple[str, tuple[float | None, float | None]], ...] = ()
    #: it needs ``Target.known`` (render parameters only SynthFaces has): measured, never offered for photos
    oracle: bool = False

    def weights_shipped(self) -> bool:
        from .pretrained import available_pretrained

        shipped = set(available_pretrained())
        return all(name in shipped for name in self.weights)

    def meets_floors(self) -> bool | None:
        """Whether the shipped checkpoint's measured metrics (its manifest entry) meet every floor;
        ``None`` when it has no floors or is not shipped. A floor's metric missing from the entry fails."""
        if not self.floors or not self.weights or not self.weights_shipped():
            return None
        from .pretrained import pretrained_info

        metrics = pretrained_info(self.weights[0]).get("metrics", {})
        return all(isinstance(metrics.get(metric), (int, float))
                   and (low is None or metrics[metric] >= low) and (high is None or metrics[metric] <= high)
                   for metric, (low, high) in self.floors)


_EDITORS: dict[str, EditorInfo] = {}


def register_editor(name: str, factory: str | Callable, *, paper: str, accepts: Sequence[str],
                    weights: Sequence[str] = (), floors: dict | None = None, oracle: bool = False,
                    replace: bool = False) -> EditorInfo:
    """Add an editor: ``factory(device=...) -> Editor`` builds it ready to edit (``"module:function"``
    keeps listing cheap). ``weights`` names the shipped checkpoints it needs; ``floors`` maps metrics
    of the first one's manifest entry to ``(lowest, highest)`` (``None``: open), shown by :func:`list_editors`.
    ``oracle``: it reads ``Target.known`` (SynthFaces' render parameters), so the photo editor leaves it out."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"editor names are lower-case identifiers, got {name!r}")
    if name in _EDITORS and not replace:
        raise ValueError(f"an editor named {name!r} is already registered (pass replace=True to replace it)")
    if isinstance(factory, str) and not _TARGET.match(factory):
        raise ValueError(f"factory must be 'module.path:function' or a callable, got {factory!r}")
    unknown = [kind for kind in accepts if kind not in TARGET_KINDS]
    if unknown or not accepts:
        raise ValueError(f"accepts must be a non-empty subset of {list(TARGET_KINDS)}, got {list(accepts)}")
    floors = dict(floors or {})
    for metric, bounds in floors.items():
        if not (isinstance(bounds, tuple) and len(bounds) == 2
                and all(b is None or isinstance(b, (int, float)) for b in bounds)):
            raise ValueError(f"floor {metric!r}: expected (lowest, highest) numbers or None, got {bounds!r}")
    info = EditorInfo(name, paper, tuple(accepts), tuple(weights), factory, tuple(floors.items()), bool(oracle))
    _EDITORS[name] = info
    return info


def editor_info(name: str) -> EditorInfo:
    """The registry entry of ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in _EDITORS:
        raise ValueError(f"unknown editor {name!r}; registered editors are {sorted(_EDITORS)}")
    return _EDITORS[name]


def list_editors():
    """Every registered editor: ``name, paper, accepts, weights_shipped, meets_floors, oracle`` as a ``pandas.DataFrame``.

    ``meets_floors``: whether the shipped model's measured figures (its manifest entry) meet the
    floors its issue set, ``None`` where it has none or is not shipped (:meth:`EditorInfo.meets_floors`).
    ``oracle``: it needs ``Target.known``, SynthFaces' render parameters (no photo has them).
    """
    import pandas as pd

    rows = [{"name": info.name, "paper": info.paper, "accepts": ", ".join(info.accepts),
             "weights_shipped": info.weights_shipped(), "meets_floors": info.meets_floors(), "oracle": info.oracle}
            for info in _EDITORS.values()]
    return pd.DataFrame(rows, columns=["name", "paper", "accepts", "weights_shipped", "meets_floors", "oracle"])


def load_editor(name: str, device: str | torch.device = "cpu") -> Editor:
    """The one obvious call: a registered editor with its shipped weights, ready to edit.

    No pass over a dataset is made: whatever an editor needs (FVAE's expression latents, the
    average flows) is stored with its checkpoint. Unshipped weights raise an error saying which
    ``python -m facelib train ... --ship`` command makes them.
    """
    info = editor_info(name)
    missing = [weights for weights in info.weights if not _shipped(weights)]
    if missing:
        raise FileNotFoundError(f"editor {name!r} needs the shipped weights {missing}, which are not in "
                                "facelib/weights; train and ship them with python -m facelib train <recipe> --ship "
                                "(python -m facelib list shows what ships)")
    factory = info.factory
    if isinstance(factory, str):
        module_name, function = factory.split(":")
        factory = getattr(importlib.import_module(module_name), function)
    editor = factory(device=device)
    if not isinstance(editor, Editor):
        raise TypeError(f"the factory of editor {name!r} returned a {type(editor).__name__}, not an Editor")
    return editor


def _shipped(name: str) -> bool:
    from .pretrained import available_pretrained

    return name in available_pretrained()


# One line per editor. The paper string names the paper and the section the editor follows.
register_editor("fvae", "facelib.models.fvae:load_fvae_editor", paper="FVAE (Yeh et al. 2016), Algorithm 1",
                accepts=("expression", "reference"), weights=("fvae",))
register_editor("fvae_pixel_vae", "facelib.models.fvae:load_pixel_vae_editor",
                paper="FVAE (Yeh et al. 2016), Sec. 6.1 'VAE' baseline", accepts=("expression", "reference"),
                weights=("fvae_pixel_vae",))
register_editor("average_flow", "facelib.models.baselines:load_average_flow_editor",
                paper="FVAE (Yeh et al. 2016), Sec. 6.1 average-flow baseline", accepts=("expression",),
                weights=("average_flow",))
register_editor("stargan", "facelib.models.stargan:load_stargan_editor",
                paper="StarGAN (Choi et al. 2018), baseline of LEED and EGGAN", accepts=("expression",),
                weights=("stargan",), floors={"expression_accuracy": (0.85, None),
                                             "identity_verification": (0.95, None),
                                             "neutraliser_accuracy": (0.90, None)})
register_editor("ganimation", "facelib.models.ganimation:load_ganimation_editor",
                paper="GANimation (Pumarola et al. 2018), Eq. 1", accepts=("aus", "expression"),
                weights=("ganimation",), floors={"au_pcc": (0.75, None), "identity_verification": (0.95, None),
                                                "attention_mean_test": (0.05, 0.95)})
register_editor("leed", "facelib.models.leed:load_leed_editor",
                paper="LEED (Wu & Lu 2020), Fig. 1, oracle neutral faces (SynthFaces' true renders)",
                accepts=("expression", "reference"), weights=("leed",), oracle=True,
                floors={"expression_accuracy": (0.80, None), "identity_verification": (0.95, None)})
register_editor("leed_fvae", "facelib.models.leed:load_leed_fvae_editor",
                paper="LEED (Wu & Lu 2020), Fig. 1, neutral faces by the shipped FVAE",
                accepts=("expression", "reference"), weights=("leed", "fvae"))
register_editor("dftnet", "facelib.models.dftnet:load_dftnet_editor", paper="DFT-Net (Wang et al. 2019), Eq. 5",
                accepts=("aus", "expression"), weights=("dftnet",),
                # au_pcc: the 0.8, above the shipped GANimation's (tests/test_dftnet.py checks both)
                floors={"au_pcc": (0.8, None), "identity_verification": (0.95, None),
                        "attention_mean_test": (0.05, 0.95)})
register_editor("eggan", "facelib.models.eggan:load_eggan_editor", paper="EGGAN (Tang et al. 2020), Eq. 8",
                accepts=("aus", "expression", "reference"), weights=("eggan", "au_regressor"),
                floors={"au_pcc": (0.8, None), "identity_verification": (0.95, None),
                        "train_seconds": (None, 2 * 3600)})
register_editor("exprgan", "facelib.models.exprgan:load_exprgan_editor",
                paper="ExprGAN (Ding et al. 2018), Fig. 2-4", accepts=("expression", "reference"),
                weights=("exprgan", "exprgan_critic"), floors={"expression_accuracy": (0.85, None),
                                                               "identity_verification": (0.95, None),
                                                               "intensity_classes_meeting_floor": (5, None)})
register_editor("optical_flow", "facelib.models.baselines:load_optical_flow_editor",
                paper="FVAE (Yeh et al. 2016), Table 1 optical-flow row (DIS, standing in for EpicFlow)", accepts=("reference",), weights=())
