"""Safety: guardrails on inputs and outputs, the adversarial (red-team) suite, and the audit trail."""
