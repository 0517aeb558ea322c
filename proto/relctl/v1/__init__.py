"""relctl.v1: stubs generated from agent.proto by proto/generate.py; never edited by hand.

This file is not generated: it holds the parts of the contract that are not messages.
"""

# Trailing metadata key the agent sets on every error it raises itself (value: its version),
# so that a client tells "the agent said UNAVAILABLE" from "the agent could not be reached".
AGENT_ERROR_METADATA = "relctl-agent-error"
