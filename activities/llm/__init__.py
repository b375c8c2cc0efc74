"""The model activity: one turn of a task's agent against an OpenAI-compatible endpoint.

turn.py is the activity; conversation.py builds the request from the task store and reads the
reply; calls.py makes the HTTP call within the token budget, heartbeating; errors.py tells Temporal
what to do about each provider error.
"""
