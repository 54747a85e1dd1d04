"""The paper's training recipes and how a call's overrides change them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters. ``milestones`` are epochs after which lr is multiplied by gamma."""

    name: str = "cifar"
    epochs: int = 350
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    milestones: tuple[int, ...] = (150, 250)
    gamma: float = 0.1
    batch_size: int = 128
    val_fraction: float = 0.1
    augment: bool = True
    optimizer: str = "sgd"

    def replace(self, **changes) -> "Recipe":
        """A copy with ``changes`` (``None`` values ignored); a new ``epochs`` without new
        ``milestones`` scales the milestones proportionally."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "epochs" in changes and "milestones" not in changes and changes["epochs"] != self.epochs:
            e = int(changes["epochs"])
            changes["milestones"] = tuple(sorted({max(1, round(m * e / self.epochs)) for m in self.milestones}))
        if "milestones" in changes:
            changes["milestones"] = tuple(int(m) for m in changes["milestones"])
        return dataclasses.replace(self, **changes)


RECIPES: dict[str, Recipe] = {
    "cifar": Recipe(),
    "tinyimagenet": Recipe(name="tinyimagenet", epochs=300, milestones=(150, 225)),
}


def resolve_recipe(recipe, **overrides) -> Recipe:
    """The recipe named (or given) with ``overrides`` (``None``: the recipe's) applied and checked."""
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)} or pass a Recipe")
        recipe = RECIPES[recipe]
    elif not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a name or a Recipe, got {type(recipe).__name__}")
    if overrides.get("optimizer") == "adamw" and recipe.optimizer != "adamw":
        # The paper's recipes are for SGD; lr 0.1 would make Adam diverge. torch's AdamW defaults.
        overrides = {"lr": 1e-3, **{k: v for k, v in overrides.items() if v is not None}}
        overrides.setdefault("weight_decay", 1e-2)
    rec = recipe.replace(**overrides)
    if isinstance(rec.epochs, bool) or not isinstance(rec.epochs, int) or rec.epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {rec.epochs!r}")
    if rec.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {rec.optimizer!r}")
    return rec


def run_config(rec: Recipe, batch_size) -> dict:
    """The settings a checkpoint stores and a resumed run must match: what changes the update."""
    cfg = dataclasses.asdict(rec)
    cfg["milestones"] = list(rec.milestones)
    cfg["batch_size"] = batch_size
    for k in ("name", "val_fraction", "augment"):  # data-side or cosmetic: no effect on the update
        cfg.pop(k)
    return cfg
