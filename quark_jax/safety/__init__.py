"""Safety: guardrails on inputs and outputs, the adversarial (red-team) suite, and the audit trail."""

from quark_jax.safety.fence import fence  # noqa: F401
from quark_jax.safety.guardrails import (  # noqa: F401
    REFUSAL, Guardrails, GuardrailsConfig, Screening, StreamGuard, guardrails_config)
from quark_jax.safety.types import Action, Rail, Verdict  # noqa: F401

__all__ = ["Action", "Guardrails", "GuardrailsConfig", "Rail", "REFUSAL", "Screening", "StreamGuard", "Verdict", "fence",
           "guardrails_config"]
