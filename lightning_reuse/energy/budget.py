"""Budgets of a fit (energy, CO2, wall time): when to warn or stop, decided from plain numbers.

:class:`BudgetGuard` holds no trainer: the fit accounting feeds it the measured totals (every
``check_every_n_steps`` training batches) and the predicted totals (after every epoch), and it answers with a
:class:`BudgetDecision` or ``None``. Two rules:

- **measured** (within an epoch): the measured total so far has reached a budget. Checked every
  ``check_every_n_steps`` batches, so the fit overshoots by at most one check interval.
- **predicted** (after an epoch): the *lower bound* of the predicted total's interval exceeds a budget, i.e. the
  run will overspend even in its cheapest likely outcome (at the interval's confidence). The lower bound
  rather than the point: a stop throws away what was spent on an unfinished run, so it should come only when
  the overspend is near certain; a run whose point prediction is over but whose lower bound is not is left
  to the measured rule, which still stops it at the budget. Without a prediction (too few or too short
  epochs, ``predict=False``) the measured total at the epoch's end is checked instead.

A quantity is decided at most once per rule (one warning, not one per check); after a ``"stop"`` nothing
more is decided.

Example:
    >>> from lightning_reuse.energy.config import EnergyConfig
    >>> guard = BudgetGuard(EnergyConfig(budget_wh=2.0, budget_action="stop", check_every_n_steps=2))
    >>> [guard.step() for _ in range(4)]
    [False, True, False, True]
    >>> guard.check_measured({"energy_wh": 1.5, "co2_g": 0.7, "duration_s": 9.0}, epoch=0) is None
    True
    >>> decision = guard.check_measured({"energy_wh": 2.1, "co2_g": 1.0, "duration_s": 12.0}, epoch=0)
    >>> decision.action, decision.basis, decision.quantity, decision.batches
    ('stop', 'measured', 'energy_wh', 4)
    >>> print(decision.message())
    Energy budget: stop after 4 batches (epoch 0): measured 2.1 Wh >= budget 2 Wh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lightning_reuse._warnings import LightningReuseWarning
from lightning_reuse.energy.config import EnergyConfig

#: Budgeted quantity -> (unit shown, suffix of the logged keys).
QUANTITIES: dict[str, tuple[str, str]] = {
    "energy_wh": ("Wh", "wh"),
    "co2_g": ("g CO2e", "co2_g"),
    "duration_s": ("s", "s"),
}


class EnergyBudgetWarning(LightningReuseWarning):
    """A budget of the fit was (or is predicted to be) exceeded; with ``budget_action="warn"`` the fit goes on."""


@dataclass(frozen=True)
class BudgetDecision:
    """A budget was (or will be) exceeded: what to do, which budget, and the numbers it was decided on.

    Args:
        action: ``"warn"`` or ``"stop"`` (the configured ``budget_action``).
        basis: ``"measured"`` (the total so far reached the budget) or ``"predicted"`` (the predicted total's
            lower bound exceeds it).
        quantity: ``"energy_wh"``, ``"co2_g"`` or ``"duration_s"``.
        budget: the limit, in the quantity's unit.
        measured: the measured total when decided (summed over DDP ranks; duration: mean over ranks).
        predicted: the predicted total (the point), ``None`` for a measured decision.
        predicted_low: the predicted total's lower bound (what the predicted rule compares).
        epoch: epochs finished in this fit when decided.
        batches: training batches of this fit when decided.
    """

    action: str
    basis: str
    quantity: str
    budget: float
    measured: float
    predicted: float | None = None
    predicted_low: float | None = None
    epoch: int = 0
    batches: int = 0

    @property
    def stops(self) -> bool:
        """Whether the fit is to stop."""
        return self.action == "stop"

    def message(self) -> str:
        """One line for logs and warnings."""
        unit = QUANTITIES[self.quantity][0]
        head = f"Energy budget: {self.action} after {self.batches} batches (epoch {self.epoch}): "
        if self.basis == "measured":
            return head + f"measured {self.measured:.4g} {unit} >= budget {self.budget:.4g} {unit}."
        return head + (
            f"predicted total {self.predicted:.4g} {unit} (lower bound {self.predicted_low:.4g} {unit}) > "
            f"budget {self.budget:.4g} {unit}; measured so far {self.measured:.4g} {unit}."
        )

    def metrics(self) -> dict[str, float]:
        """Logged keys: ``energy/budget_<unit>``, ``energy/budget_measured_<unit>``, the predicted total
        (``energy/budget_predicted_<unit>`` and ``_low``) for a predicted decision, ``energy/budget_exceeded``
        and ``energy/budget_stopped``.

        >>> sorted(BudgetDecision("warn", "measured", "co2_g", 1.0, 1.2).metrics())  # doctest: +NORMALIZE_WHITESPACE
        ['energy/budget_co2_g', 'energy/budget_exceeded', 'energy/budget_measured_co2_g',
         'energy/budget_stopped']
        """
        suffix = QUANTITIES[self.quantity][1]
        metrics = {
            f"energy/budget_{suffix}": self.budget,
            f"energy/budget_measured_{suffix}": self.measured,
            "energy/budget_exceeded": 1.0,
            "energy/budget_stopped": float(self.stops),
        }
        if self.predicted is not None:
            metrics[f"energy/budget_predicted_{suffix}"] = self.predicted
        if self.predicted_low is not None:
            metrics[f"energy/budget_predicted_{suffix}_low"] = self.predicted_low
        return metrics

    def to_dict(self) -> dict[str, Any]:
        """Plain values, with the message."""
        return {**asdict(self), "message": self.message()}


class BudgetGuard:
    """Checks measured and predicted totals against the budgets of an :class:`EnergyConfig`.

    Args:
        config: the validated options (``budget_wh``, ``budget_co2_g``, ``budget_s``, ``budget_action``,
            ``check_every_n_steps``).

    Attributes:
        decisions: every decision recorded in this fit, in order.
        stopped: the decision that stopped the fit, if one did.
    """

    def __init__(self, config: EnergyConfig) -> None:
        self.budgets = config.budgets
        self.action = config.budget_action
        self.every = config.check_every_n_steps
        self.reset()

    def reset(self) -> None:
        """A new fit: no batches, no decisions."""
        self.batches = 0
        self.decisions: list[BudgetDecision] = []
        self.stopped: BudgetDecision | None = None
        self._decided: set[tuple[str, str]] = set()

    @property
    def active(self) -> bool:
        """Whether any budget is set and the fit was not stopped yet."""
        return bool(self.budgets) and self.stopped is None

    def step(self) -> bool:
        """A training batch ended: whether the measured total is to be checked now (every n batches)."""
        self.batches += 1
        return self.active and self.batches % self.every == 0

    def check_measured(self, measured: Mapping[str, float], epoch: int) -> BudgetDecision | None:
        """The first budget the measured totals (``quantity -> value``) have reached, if any (not recorded)."""
        for quantity, budget in self.budgets.items() if self.active else ():
            value = float(measured[quantity])
            if value >= budget and (quantity, "measured") not in self._decided:
                return BudgetDecision(
                    self.action, "measured", quantity, budget, value, None, None, epoch, self.batches
                )
        return None

    def check_predicted(
        self, measured: Mapping[str, float], predicted: Mapping[str, tuple[float, float]], epoch: int
    ) -> BudgetDecision | None:
        """After an epoch: the first budget that the predicted lower bound exceeds, if any (not recorded).

        Args:
            measured: quantity -> the measured total at the epoch's end.
            predicted: quantity -> ``(point, lower bound)`` of the predicted total; a quantity that is missing
                or NaN (no prediction) is checked on its measured total instead.
            epoch: epochs finished in this fit.
        """
        for quantity, budget in self.budgets.items() if self.active else ():
            point, low = predicted.get(quantity, (math.nan, math.nan))
            value = float(measured[quantity])
            if math.isfinite(low) and math.isfinite(point):
                if low > budget and (quantity, "predicted") not in self._decided:
                    return BudgetDecision(
                        self.action, "predicted", quantity, budget, value, point, low, epoch, self.batches
                    )
            elif value >= budget and (quantity, "measured") not in self._decided:
                return BudgetDecision(
                    self.action, "measured", quantity, budget, value, None, None, epoch, self.batches
                )
        return None

    def record(self, decision: BudgetDecision | None) -> BudgetDecision | None:
        """Keep ``decision`` (``None``: nothing decided); a ``"stop"`` ends the checks. Returns it."""
        if decision is not None:
            self.decisions.append(decision)
            self._decided.add((decision.quantity, decision.basis))
            if decision.stops:
                self.stopped = decision
        return decision

    def summary(self) -> dict[str, Any]:
        """The budgets, the action and every decision (for the totals file)."""
        return {
            "budgets": dict(self.budgets),
            "action": self.action,
            "check_every_n_steps": self.every,
            "stopped": self.stopped is not None,
            "decisions": [d.to_dict() for d in self.decisions],
        }
