# The taskpool worker (and starter.py, for one-off commands in the same image).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, read from pyproject.toml, so a code change does not reinstall them: the
# worker's own and the `postgres` extra (the compose topology's task store), not the `demo` extra
# (the Temporal CLI and llama.cpp server a laptop demo runs) nor `dev`.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['postgres']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY taskpool/ taskpool/
COPY workflows/ workflows/
COPY activities/ activities/
COPY worker.py starter.py ./
# Compiled once here: the workflow sandbox imports the workflow modules afresh for every workflow
# it runs, and with PYTHONDONTWRITEBYTECODE nothing would ever write the .pyc files it could reuse.
RUN pip install --no-deps . \
    && python -m compileall -q taskpool workflows activities \
    && useradd --create-home --uid 10001 taskpool

USER taskpool

CMD ["python", "worker.py"]
