"""The client side of taskpool: the Python API that starter.py's command line (and later the
console) is built on. It reads task files, starts batches, steers them and reads them back; it
prints nothing and exits nowhere. Functions take typed arguments, return typed models, and raise
ClientErrors whose text says what happened in one line.

Modules, by what they do:

- `inputs`: `load_tasks(path)` reads and checks a task file (JSON Lines, CSV or a directory of
  text files); InputError lists every problem.
- `connect`: `connect_client()` connects to Temporal with the SDK's standard settings.
- `starting`: `start_new_batch(client, batch_id, prepare_batch(tasks), ...)` writes the task
  definitions to the workers' task store, then starts the batch workflow under a new id.
- `steering`: `await RunningBatch.find(client, batch_id)` gives a running batch to pause, resume,
  cancel (all or some of its tasks), add tasks to, retry, review, or give a new concurrency.
- `reading`: `find_batch`, `read_status`, `read_tasks`, `wait_for_result`; `listing`:
  `list_batches`; `snapshot`: one look at a batch for a live view (status, running tasks, pace).
- `records`: the task store's side, which needs no Temporal: `task_record` (optionally waiting
  for an outcome), `stored_results`, `add_comment`; `export`: results as JSON Lines.
- `errors`: ClientError and its kinds. A RequestError means the request itself is wrong (an
  unknown batch, a bad argument, a request the batch refused); others may pass (no worker
  answering, Temporal or the store out of reach) or say how things stand (BatchFinishedError).
- `batches`: the batch workflow's own operations, one SDK call each, raising the SDK's errors;
  the modules above build on them, and tests and benchmarks use them directly.

An example: start a batch from a file, pause it, and read its status::

    from pathlib import Path

    from taskpool.client.batches import prepare_batch
    from taskpool.client.connect import connect_client
    from taskpool.client.inputs import load_tasks
    from taskpool.client.reading import read_status
    from taskpool.client.starting import start_new_batch
    from taskpool.client.steering import RunningBatch

    async def main() -> None:
        client = await connect_client()
        tasks = load_tasks(Path("tasks.jsonl"))
        started = await start_new_batch(
            client,
            "docs-1",
            prepare_batch(tasks),
            task_queue="taskpool",
            store_url="data/taskpool.db",
        )
        batch = await RunningBatch.find(client, started.batch_id)
        await batch.pause("lunch")
        status = await read_status(client, batch.info)
        print(status.state, status.counts)
"""
