"""Checks across tasks: ids unique in the file and new to the batch, kinds known, and every
dependency naming a task, never the task itself, and never closing a cycle.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping, Sequence

from taskpool.client.inputs.draft import Draft, Reading
from taskpool.client.inputs.problems import Problems
from taskpool.client.inputs.wording import suggest

# Suggesting near matches compares against every id; past this many it costs more than it helps.
_MAX_SUGGESTIONS = 20


def check_batch(
    source: str,
    reading: Reading,
    problems: Problems,
    *,
    default_kind: str | None,
    known_kinds: Collection[str] | None,
    existing_ids: Collection[str],
    check_dependencies: bool,
) -> None:
    """Report what is wrong across the tasks read from `source`; see load_tasks for the options."""
    if known_kinds is not None:
        _check_kinds(source, reading.drafts, default_kind, known_kinds, problems)
    existing = set(existing_ids)
    first: dict[str, Draft] = {}
    for draft in reading.drafts:
        if draft.id is None:
            continue
        if draft.id in existing:
            problems.add(draft.path, draft.line, f"id {draft.id!r} is already in the batch")
        elif draft.id in first:
            earlier = first[draft.id]
            place = f"on line {earlier.line}" if earlier.line is not None else f"in {earlier.path}"
            problems.add(draft.path, draft.line, f"duplicate id {draft.id!r} (first used {place})")
        else:
            first[draft.id] = draft
    if check_dependencies:
        _check_dependencies(first, existing, reading.complete, problems)


def _check_kinds(
    source: str,
    drafts: Sequence[Draft],
    default_kind: str | None,
    known_kinds: Collection[str],
    problems: Problems,
) -> None:
    known = ", ".join(sorted(known_kinds))
    if default_kind is not None and default_kind not in known_kinds:
        problems.add(
            source,
            None,
            f"unknown default kind {default_kind!r}{suggest(default_kind, known_kinds)}; "
            f"known kinds: {known}",
        )
    for draft in drafts:
        # Tasks given the default kind are covered by the one problem above.
        if draft.spec is None or draft.kind_is_default or draft.spec.kind in known_kinds:
            continue
        kind = draft.spec.kind
        problems.add(
            draft.path,
            draft.line,
            f"unknown kind {kind!r}{suggest(kind, known_kinds)}; known kinds: {known}",
        )


def _check_dependencies(
    tasks: Mapping[str, Draft], existing: set[str], complete: bool, problems: Problems
) -> None:
    """Every dependency must name a task, never the task itself, and never close a cycle.

    When part of the source could not be read, a dependency may name a task in that part, so
    unknown dependencies are left for the next attempt rather than reported falsely.
    """
    elsewhere = "in this file or the batch" if existing else "in this file"
    suggestions = 0
    graph: dict[str, list[str]] = {}
    for task_id, draft in tasks.items():
        if draft.spec is None:
            continue
        graph[task_id] = []
        for dep in draft.spec.depends_on:
            if dep == task_id:
                problems.add(draft.path, draft.line, f"task {task_id!r} depends on itself")
            elif dep in tasks:
                # A cycle through an invalid task shows up once that task is fixed.
                if tasks[dep].spec is not None:
                    graph[task_id].append(dep)
            elif dep not in existing and complete:
                hint = ""
                if suggestions < _MAX_SUGGESTIONS:
                    suggestions += 1
                    hint = suggest(dep, tasks)
                message = f"depends_on: no task {dep!r} {elsewhere}{hint}"
                problems.add(draft.path, draft.line, message)
    for cycle in _find_cycles(graph):
        start = tasks[cycle[0]]
        problems.add(start.path, start.line, "dependency cycle: " + " -> ".join(cycle))


def _find_cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, as [a, b, ..., a].

    Each cycle starts at the component's earliest task in `graph`'s order. Iterative (Tarjan),
    because a long chain of dependencies would exhaust Python's recursion limit.
    """
    order = {node: position for position, node in enumerate(graph)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in graph:
        if root in index:
            continue
        visit(root)
        work = [(root, iter(graph[root]))]
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    visit(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: set[str] = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        start = min(component, key=order.__getitem__)
                        cycles.append(_shortest_cycle(graph, component, start))
    cycles.sort(key=lambda cycle: order[cycle[0]])
    return cycles


def _shortest_cycle(
    graph: Mapping[str, Sequence[str]], component: set[str], start: str
) -> list[str]:
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in graph[node]:
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if nxt in component and nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"{start!r} is in a strongly connected component but on no cycle")
