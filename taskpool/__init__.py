"""taskpool: large batches of LLM tasks as durable Temporal workflows."""
