"""Binary or multiclass: what the manifest's classes make of a run (:class:`Task`).

A manifest written by ``prepare --classes`` carries a :class:`~segbalance.classes.ClassSet`
(K classes, the first the background). Its run trains a K-channel softmax model
(``model.classes`` = K, taken from the manifest: 1, the default, means "from the data"; any
other value must be K), a loss over class indices with class weights
(``loss.class_weights``: a mapping, ``auto`` from the train split's pixel fractions, or
none), per-class confusion counts ``[K, 4]`` and per-class columns in history.csv. A
manifest without classes keeps every binary behaviour as it was.

Example:
    >>> task = resolve_task(cfg, train_rows)  # doctest: +SKIP
    >>> task.num_classes, task.class_names  # doctest: +SKIP
    (3, ['background', 'nail', 'skin'])
"""

from __future__ import annotations

from dataclasses import dataclass

from segbalance.classes import ClassSet, resolve_class_weights
from segbalance.config import Config
from segbalance.data.manifest import Manifest
from segbalance.errors import UserError
from segbalance.losses import SegmentationLoss, get_loss, parse_loss_expression


@dataclass(frozen=True)
class Task:
    """The classes of a run (None: binary) and the loss's class weights in index order."""

    spec: ClassSet | None = None
    class_weights: list[float] | None = None
    weights_source: str | None = None  # "auto", "config" or None

    @property
    def multiclass(self) -> bool:
        """K >= 2 softmax channels, masks of class indices."""
        return self.spec is not None

    @property
    def num_classes(self) -> int:
        """The loss's classes: K, or 1 for binary."""
        return 1 if self.spec is None else self.spec.num_classes

    @property
    def class_names(self) -> list[str] | None:
        """The K class names (background first); None for binary."""
        return None if self.spec is None else self.spec.names

    @property
    def counts_shape(self) -> tuple[int, ...]:
        """Shape of one image's confusion counts: (4,) or (K, 4)."""
        return (4,) if self.spec is None else (self.spec.num_classes, 4)

    def loss(self, cfg: Config) -> SegmentationLoss:
        """The loss of ``cfg.loss`` for this task."""
        return get_loss(cfg.loss, classes=self.num_classes, class_weights=self.class_weights)

    def describe(self) -> list[str]:
        """Lines for the run's header: the classes and their weights (none for binary)."""
        if self.spec is None:
            return []
        line = f"classes {', '.join(self.spec.names)} (K={self.spec.num_classes}; background "
        line += f"'{self.spec.names[0]}' left out of a group's iou)"
        if self.class_weights is not None:
            weights = ", ".join(
                f"{n} {w:.3g}" for n, w in zip(self.spec.names, self.class_weights, strict=True)
            )
            line += f"; class weights ({self.weights_source}): {weights}"
        return [line]


def check_model_classes(cfg: Config, spec: ClassSet | None, where: str) -> None:
    """``model.classes`` must be 1 (from the data) or the manifest's K (binary: 1).

    Raises:
        UserError: naming both numbers and the classes.
    """
    given = cfg.model.classes
    if spec is None and given > 1:
        # A binary mask cannot train K channels (no loss compares them); say what does.
        raise UserError(
            f"model.classes is {given}, but {where} has no classes (binary masks); prepare "
            "the data with 'segbalance prepare --classes FILE' or leave model.classes at 1"
        )
    if spec is None or given in (1, spec.num_classes):
        return
    raise UserError(
        f"model.classes is {given}, but {where} has {spec.num_classes} classes "
        f"({', '.join(spec.names)}); leave model.classes out (it is taken from the manifest) "
        f"or set it to {spec.num_classes}"
    )


def resolve_task(cfg: Config, train: Manifest) -> Task:
    """The task of a run on the ``train`` rows; everything refusable is refused here.

    Raises:
        UserError: ``model.classes`` other than the manifest's K, class weights for a binary
            manifest or naming unknown classes, a loss with no multiclass form.
    """
    where = f"manifest {cfg.data.manifest}" if cfg.data.manifest else "the manifest"
    spec = train.classes
    check_model_classes(cfg, spec, where)
    if spec is None:
        if cfg.loss.class_weights is not None:
            raise UserError(
                f"loss.class_weights is set, but {where} has no classes (binary); prepare the "
                "data with 'segbalance prepare --classes FILE' or drop loss.class_weights"
            )
        return Task()
    parse_loss_expression(cfg.loss.name, spec.num_classes)  # e.g. 'bce' has no K-class form
    weights = resolve_class_weights(cfg.loss.class_weights, spec, train.class_coverage)
    source = None if weights is None else ("auto" if cfg.loss.class_weights == "auto" else "config")
    return Task(spec, weights, source)


def task_config(cfg: Config, task: Task) -> Config:
    """``cfg`` with ``model.classes`` = K for a multiclass task (binary: ``cfg`` itself)."""
    if not task.multiclass or cfg.model.classes == task.num_classes:
        return cfg
    model = cfg.model.model_copy(update={"classes": task.num_classes})
    return cfg.model_copy(update={"model": model})
