"""Development tools: the demo, the embedded dev server and the local model. Not needed by a
production worker (the `demo` extra installs what they run).
"""
