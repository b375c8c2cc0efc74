"""The domain: pure, deterministic and sandbox-safe. The only package workflow code imports;
it imports nothing outside itself but pydantic and temporalio's data types.
"""
