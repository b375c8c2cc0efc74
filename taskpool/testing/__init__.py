"""Test doubles that are part of the public package: the scripted OpenAI-compatible model
server, for tests, benchmarks and the offline demo.
"""
