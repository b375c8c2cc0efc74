"""I/O for workers and starters: the task store, rate limits, settings, logging and the Temporal
connection. Never imported by workflow code.
"""
