"""The client side: task files, and starting, steering and reading batches. The CLI and the
console are built on it.
"""
