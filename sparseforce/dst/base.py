"""The part RigL, SET and gradual magnitude pruning share: argument checks, the step counter, the
arming of the gradient capture, and ``state_dict``/``load_state_dict``."""
from __future__ import annotations

from .. import _checks
from .schedules import is_update
from .updater import Binding

SCOPES = ("layer", "global")


def check_steps(total_steps, update_every) -> tuple[int, int]:
    return _checks.integer("total_steps", total_steps, 1), _checks.integer("update_every", update_every, 1)


def check_fraction(name: str, value, low_open: bool = False) -> float:
    value = _checks.real(name, value, "a number in [0, 1]")
    if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")
    return value


def check_scope(scope) -> str:
    if not isinstance(scope, str) or scope not in SCOPES:
        error = TypeError if not isinstance(scope, str) else ValueError
        raise error(f"scope must be one of {', '.join(map(repr, SCOPES))}, got {_checks.describe(scope)}")
    return scope


class DynamicSparsity:
    """Bound to a model, its masks and its optimizer; ``step()`` once per training step, after
    ``optimizer.step()``. Subclasses say which steps update (``_is_update``), what an update does
    (``_update``) and whether it needs the dense gradient (``_wants_gradients``)."""

    def __init__(self, model, masks, optimizer, *, backend, process_group, options: dict):
        self._options = options
        self._binding = Binding(model, masks, optimizer, backend, process_group)
        if self._binding.sharded and options["scope"] == "layer":
            raise NotImplementedError(
                f"{type(self).__name__}(scope='layer') on a model sharded with FSDP2: a layer's shards lie on "
                "several ranks and only the global selection ranks across them; pass scope='global'")
        self._t = 0

    def _start(self) -> None:
        """The last step of a constructor, after every check: register what training needs."""
        if self._binding.sharded:
            self._binding.enforce()
        if self._wants_gradients():
            self._binding.capture_gradients()
        self._arm()

    @property
    def steps_taken(self) -> int:
        """Training steps counted so far (``step()`` calls)."""
        return self._t

    @property
    def masks(self):
        """The masks this object updates (the caller's tensors)."""
        return self._binding.mask_map

    def _is_update(self, t: int) -> bool:
        return is_update(t, self._options["update_every"], self._options["end"] * self._options["total_steps"])

    def _wants_gradients(self) -> bool:
        return False

    def _update(self, t: int) -> None:
        raise NotImplementedError

    def _arm(self) -> None:
        if self._binding.gradients is not None:
            self._binding.gradients.arm(self._is_update(self._t + 1))

    def step(self) -> bool:
        """Count one training step; update the masks if it is an update step (returns whether it was)."""
        t = self._t + 1
        updated = self._is_update(t)
        if updated:
            self._update(t)
        self._t = t
        if self._binding.sharded:
            self._binding.enforce()
        self._arm()
        return updated

    def remove(self) -> None:
        """Stop capturing gradients (the masks stay as they are)."""
        self._binding.remove()

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        """The step counter, the options (checked on load) and anything else resuming needs."""
        return {"method": type(self).__name__, "step": self._t, "options": dict(self._options),
                **self._extra_state()}

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict` (the masks, model and optimizer are restored by the caller).
        A state of another method or other options is a ``ValueError`` naming the difference."""
        if not isinstance(state, dict) or not {"method", "step", "options"} <= set(state):
            raise TypeError(f"state must be a dict from {type(self).__name__}.state_dict(), got "
                            f"{_checks.describe(state)}")
        if state["method"] != type(self).__name__:
            raise ValueError(f"state is {state['method']}'s, not {type(self).__name__}'s")
        for key, value in self._options.items():
            if state["options"].get(key) != value:
                raise ValueError(f"state was saved with {key}={state['options'].get(key)!r}, but this "
                                 f"{type(self).__name__} has {key}={value!r}")
        step = _checks.integer("state['step']", state["step"], 0)
        self._load_extra_state(state)
        self._t = step
        self._arm()

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._options.items())
        return f"{type(self).__name__}({options}, step={self._t})"
