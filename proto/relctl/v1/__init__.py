"""relctl.v1: stubs generated from agent.proto by proto/generate.py; never edited by hand.

This file is not generated: it holds the parts of the contract that are not messages.
"""

# Trailing metadata key the agent sets on every error it raises itself (value: its version),
# so that a client tells "the agent said UNAVAILABLE" from "the agent could not be reached".
AGENT_ERROR_METADATA = "relctl-agent-error"

# The list calls (ListOperations, ListAudit): a request's limit of 0 asks for DEFAULT_LIST_LIMIT
# entries, and no answer holds more than MAX_LIST_LIMIT. Here, not in the agent's config, as
# both sides need them: relctl's --limit defaults to the same number and refuses a larger one.
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000
