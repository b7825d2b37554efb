"""The training state that crosses the jit boundary."""

from __future__ import annotations

from typing import Any

import jax
from flax import struct


@struct.dataclass
class TrainState:
    """Step counter, parameters (a pure dict of arrays) and optimizer state.

    The model's graph definition is static and lives outside, in the closure of the step functions.
    """

    step: jax.Array
    params: Any
    opt_state: Any
