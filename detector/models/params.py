"""Declared parameters of every model: type and range, checked before a model is built.

scikit-learn declares parameter constraints instead of coding them (``_parameter_constraints``);
here each model's constructor parameters get a type and a range in :data:`CONSTRAINTS`, and
:func:`params_model` builds a strict pydantic model from them, with the defaults taken from the
model's ``__init__`` (one source for defaults). ``validate-config``, hot reload and the JSON
API (``POST /api/v1/score``) all validate through it, and the OpenAPI document describes
``params`` with the JSON Schema it generates.

Ranges bound the cost too: a request cannot ask the seasonal model for a billion phase bins.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from detector.models import MODELS, model_class

MAX_WINDOW = 100_000  # points a rolling window or a minimum may span


def _offset(text: str) -> str:
    try:
        seconds = pd.Timedelta(text).total_seconds()
    except (TypeError, ValueError):
        raise ValueError(f"expected a pandas offset like '1D' or '7D', got {text!r}") from None
    if not 60 <= seconds <= 366 * 86400:
        raise ValueError(f"a seasonal period must be between 1 minute and 366 days, got {text!r}")
    return text


Offset = Annotated[str, AfterValidator(_offset)]

CONSTRAINTS: dict[str, dict[str, Any]] = {
    "robust": {
        "window": Annotated[int, Field(ge=1, le=MAX_WINDOW)],
        "k": Annotated[float, Field(gt=0, le=1000)],
        "min_points": Annotated[int, Field(ge=1, le=MAX_WINDOW)],
        "min_scale": Annotated[float, Field(ge=0, le=1000)],
    },
    "seasonal": {
        "seasonality": Literal["auto", "daily", "weekly", "none"] | Annotated[list[Offset], Field(max_length=4)],
        "k": Annotated[float, Field(gt=0, le=1000)],
        "min_points": Annotated[int, Field(ge=1, le=1_000_000)],
        "min_cycles": Annotated[float, Field(gt=0, le=1000)],
        "max_points_per_day": Annotated[int, Field(ge=1, le=8640)],
        "phase_bins": Annotated[int, Field(ge=1, le=1440)],
        "level_alpha": Annotated[float, Field(ge=0, le=1)],
        "min_scale": Annotated[float, Field(ge=0, le=1000)],
        "clip_outliers": bool,
    },
    "iforest": {
        "n_estimators": Annotated[int, Field(ge=1, le=1000)],
        "max_samples": (Annotated[int, Field(ge=1, le=MAX_WINDOW)] | Annotated[float, Field(gt=0, le=1)]
                        | Literal["auto"]),
        "threshold_quantile": Annotated[float, Field(gt=0, lt=1)],
        "margin": Annotated[float, Field(gt=0, le=1000)],
        "deltas": bool,
        "whiten": bool,
        "min_points": Annotated[int, Field(ge=2, le=1_000_000)],
        "z_limit": Annotated[float, Field(gt=0, allow_inf_nan=True)],  # inf turns the guard off
        "explain_above": Annotated[float, Field(ge=0, allow_inf_nan=True)],  # inf: never explain
        "max_top_features": Annotated[int, Field(ge=0, le=100)],
        "random_state": Annotated[int, Field(ge=0, le=2**32 - 1)] | None,
    },
    "peer": {
        "target": Annotated[str, Field(min_length=1, max_length=500)] | None,
        "covariate": Annotated[str, Field(min_length=1, max_length=500)] | None,
        "k": Annotated[float, Field(gt=0, le=1000)],
        "tolerance": Annotated[float, Field(ge=0, le=1e12)],
        "min_members": Annotated[int, Field(ge=2, le=100_000)],
        "explain_above": Annotated[float, Field(ge=0, allow_inf_nan=True)],  # inf: never explain
    },
    "ensemble": {
        "window": Annotated[int, Field(ge=1, le=MAX_WINDOW)],
        "k": Annotated[float, Field(gt=0, le=1000)],
        "min_points": Annotated[int, Field(ge=1, le=MAX_WINDOW)],
        "min_scale": Annotated[float, Field(ge=0, le=1000)],
        "n_estimators": Annotated[int, Field(ge=1, le=1000)],
        "max_samples": Annotated[int, Field(ge=1, le=MAX_WINDOW)],
        "threshold_quantile": Annotated[float, Field(gt=0, lt=1)],
        "margin": Annotated[float, Field(gt=0, le=1000)],
        "z_limit": Annotated[float, Field(gt=0, allow_inf_nan=True)],  # inf turns the guard off
        "random_state": Annotated[int, Field(ge=0, le=2**32 - 1)] | None,
    },
    "context": {
        "levels": Annotated[int, Field(ge=1, le=64)],
        "orders": Annotated[int, Field(ge=1, le=8)],
        "threshold": Annotated[float, Field(gt=0, le=1)],
        "rest": Annotated[int, Field(ge=0, le=MAX_WINDOW)],
        "min_points": Annotated[int, Field(ge=1, le=MAX_WINDOW)],
        "window": Annotated[int, Field(ge=1, le=MAX_WINDOW)],
        "k": Annotated[float, Field(gt=0, le=1000)],
        "min_scale": Annotated[float, Field(ge=0, le=1000)],
        "band_cap": Annotated[float, Field(gt=0, le=1000)],
        "hold": Annotated[int, Field(ge=0, le=MAX_WINDOW)],
    },
}


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def init_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The constructor parameters of model ``name`` (``self`` left out)."""
    signature = inspect.signature(model_class(name).__init__)
    return {p: value for p, value in signature.parameters.items() if p != "self"}


@cache
def params_model(name: str) -> type[BaseModel]:
    """A strict pydantic model of model ``name``'s parameters: declared types and ranges, ``__init__``
    defaults. ``KeyError`` for an unknown model; ``TypeError`` when a parameter is undeclared."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    declared = CONSTRAINTS.get(name, {})
    fields = {}
    for parameter, spec in init_parameters(name).items():
        if parameter not in declared:
            raise TypeError(f"model {name!r}: parameter {parameter!r} has no declared type and range "
                            "in detector/models/params.py")
        fields[parameter] = (declared[parameter], spec.default)
    return create_model(f"{model_class(name).__name__}Params", __base__=_Params, **fields)


def check_params(name: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """Every problem of ``params`` for model ``name`` as ``(key, reason)``; ``key`` is the parameter
    name, or ``""`` for unknown parameters (one entry naming them all). Empty when valid."""
    try:
        params_model(name).model_validate(params)
    except ValidationError as err:
        problems, unknown = [], []
        for error in err.errors():
            if error["type"] == "extra_forbidden":
                unknown.append(str(error["loc"][0]))
                continue
            key = str(error["loc"][0]) if error["loc"] else ""
            reason = error["msg"].removeprefix("Value error, ")
            shown = repr(error.get("input"))
            if "input" in error and len(shown) < 60 and shown not in reason:
                reason = f"{reason} (got {shown})"
            problems.append((len(error["loc"]), key, reason))
        if unknown:
            accepted = ", ".join(init_parameters(name))
            problems.insert(0, (0, "", f"unknown parameter(s) {', '.join(sorted(unknown))} for model {name!r}; "
                                    f"accepted: {accepted}"))
        return _one_per_key(problems)
    return []


def _one_per_key(problems: list[tuple[int, str, str]]) -> list[tuple[str, str]]:
    """One problem per parameter: a union type reports one error per member; the deepest one (inside
    the member the value matched, e.g. a bad list item) reads best, else the first."""
    best: dict[str, tuple[int, str]] = {}
    for depth, key, reason in problems:
        if key not in best or depth > best[key][0]:
            best[key] = (depth, reason)
    return [(key, reason) for key, (_, reason) in best.items()]


def params_schema(name: str) -> dict[str, Any]:
    """JSON Schema of model ``name``'s parameters (for the OpenAPI document)."""
    return params_model(name).model_json_schema()
