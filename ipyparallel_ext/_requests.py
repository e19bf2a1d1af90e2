"""Requests: what a Client knows about the requests it sent, and ipyparallel's names for it.

:class:`RequestHistory` is the half of :class:`~._client.Client` that reads
and forgets its own :class:`~._record.MessageRecord`\\ s: ``results``,
``metadata``, ``outstanding``, ``wait``, ``get_result``, the ``purge_*``
methods and the Hub-database names (``hub_history``, ``result_status``,
``db_query``, ``resubmit``).  There is no Hub: every one of them works on
this client's own records, or says what to do instead.
"""

from __future__ import annotations

from collections.abc import Sized

from ._asyncresult import AsyncResult
from ._record import DONE


class RequestHistory:
    """This client's own requests (a mixin of :class:`~._client.Client`).

    Expects ``self._records`` (msg_id -> record), ``self.history``,
    ``self._views``, ``self.block`` and ``resolve_targets`` from the Client.
    """

    def _records_for(self, jobs) -> list:
        """Records named by AsyncResults, msg_ids or history indices."""
        if jobs is None:
            return [r for r in list(self._records.values()) if r.state != DONE]
        if isinstance(jobs, (str, int, AsyncResult)):
            jobs = [jobs]
        records = []
        for job in jobs:
            if isinstance(job, AsyncResult):
                records.extend(job._records)
            elif isinstance(job, int):
                records.append(self._records[self.history[job]])
            elif job in self._records:
                records.append(self._records[job])
            else:
                raise KeyError(f"unknown msg_id {job!r}: not a request of this client, or purged"
                               f" (there is no hub: a client knows only the requests it sent)")
        return records

    @property
    def outstanding(self) -> set:
        """msg_ids of requests that have not finished."""
        return {m for m, r in list(self._records.items()) if r.state != DONE}

    @property
    def results(self) -> dict:
        """msg_id -> result (or error) of every finished request still held."""
        return {m: r.value() for m, r in list(self._records.items()) if r.state == DONE}

    @property
    def metadata(self) -> dict:
        """msg_id -> metadata of every request still held."""
        return {m: r.metadata for m, r in list(self._records.items())}

    def wait(self, jobs=None, timeout=-1) -> bool:
        """Wait for ``jobs`` (default: everything outstanding); True if all finished."""
        return AsyncResult(self, self._records_for(jobs), fname="wait").wait(timeout)

    def get_result(self, indices_or_msg_ids=None, block=None, owner=False):
        """An AsyncResult for earlier requests (by msg_id or history index).

        Waits for it if ``block`` (default: :attr:`block`) is true.
        """
        if indices_or_msg_ids is None:
            indices_or_msg_ids = -1
        records = self._records_for(indices_or_msg_ids)
        single = isinstance(indices_or_msg_ids, (str, int)) or (
            isinstance(indices_or_msg_ids, AsyncResult) and indices_or_msg_ids._single_result)
        ar = AsyncResult(self, records, fname="get_result", single=single)
        if self.block if block is None else block:
            ar.wait()
        return ar

    def purge_results(self, jobs=(), targets=()) -> None:
        """Forget results, as :meth:`purge_local_results` does (there is no Hub to purge)."""
        self.purge_local_results(jobs=jobs, targets=targets)
        self.purge_hub_results(jobs=jobs, targets=targets)

    def wait_interactive(self, jobs=None, interval=1.0, timeout=-1):
        """Wait for ``jobs`` (default: everything outstanding) with a progress bar."""
        records = self._records_for(jobs)
        if not records:
            return None
        return AsyncResult(self, records, fname="wait_interactive").wait_interactive(interval=interval,
                                                                                     timeout=timeout)

    def purge_local_results(self, jobs=(), targets=()) -> None:
        """Forget finished results: ``jobs='all'``, some jobs, or those of ``targets``.

        AsyncResults that hold results keep them; views forget the purged
        msg_ids too, so memory stays flat however much work was run.

        Raises
        ------
        ValueError
            If neither ``jobs`` nor ``targets`` is given.
        RuntimeError
            If any of the named requests has not finished (wait for it, or
            abort it, first); nothing is purged then.
        """
        jobs_given, targets_given = _purge_arguments(jobs, targets)
        if jobs == "all" or targets == "all":
            chosen = list(self._records.values())
        else:
            chosen = self._records_for(jobs) if jobs_given else []
            if targets_given:
                ids = set(self.resolve_targets(targets))
                chosen += [r for r in list(self._records.values()) if r.engine_id in ids]
        running = sorted({r.msg_id for r in chosen if r.state != DONE})
        if running:
            raise RuntimeError(f"cannot purge {len(running)} unfinished request(s) {running[:3]}"
                               f"{'...' if len(running) > 3 else ''}: wait for them or abort them first")
        gone = {r.msg_id for r in chosen}
        for msg_id in gone:
            self._records.pop(msg_id, None)
        if gone:
            for history in [self.history, *(view.history for view in list(self._views))]:
                history[:] = [m for m in history if m not in gone]

    def purge_hub_results(self, jobs=(), targets=()) -> None:
        """Nothing to do: there is no Hub, so no results are stored outside this client.

        The arguments are checked as ipyparallel does; use
        :meth:`purge_local_results` (or :meth:`purge_results`) to free memory.
        """
        _purge_arguments(jobs, targets)

    def purge_everything(self) -> None:
        """Forget every finished result and the history of this client and its views."""
        self.purge_results("all")
        for history in [self.history, *(view.history for view in list(self._views))]:
            history.clear()

    def hub_history(self) -> list:
        """msg_ids of this client's requests, oldest first (there is no Hub with other clients')."""
        return list(self.history)

    def result_status(self, msg_ids, status_only=True) -> dict:
        """Which of this client's requests are pending and which completed.

        Returns ``{'status': 'ok', 'pending': [...], 'completed': [...]}``, plus ``msg_id ->
        result`` (or the error) for completed ones when ``status_only`` is
        False.  Only this client's own requests are known (there is no Hub).
        """
        records = self._records_for(msg_ids)
        status = {"status": "ok", "pending": [r.msg_id for r in records if r.state != DONE],
                  "completed": [r.msg_id for r in records if r.state == DONE]}
        if not status_only:
            status.update((r.msg_id, r.value()) for r in records if r.state == DONE)
        return status

    def db_query(self, query, keys=None) -> list:
        """This client's request records that match a MongoDB-style ``query``.

        Records have the keys of :attr:`metadata` (``msg_id``, ``engine_id``,
        ``submitted``, ``started``, ``completed``, ``received``, ``status``,
        ``stdout``, ``stderr``, ...).  A query maps keys to values, or to
        operators: ``$lt $lte $gt $gte $eq $ne $in $nin $exists``.  ``keys``
        selects the keys returned (``msg_id`` always is).  There is no Hub:
        other clients' requests are not in it.
        """
        if isinstance(keys, str):
            keys = [keys]
        tests = {key: _query_test(key, condition) for key, condition in query.items()}
        found = []
        for record in list(self._records.values()):
            md = record.metadata
            if all(test(md.get(key)) for key, test in tests.items()):
                found.append(md if keys is None else {k: md.get(k) for k in ["msg_id", *keys]})
        return found

    def resubmit(self, indices_or_msg_ids=None, metadata=None, block=None):
        """Not available: this client does not keep what it sent (memory stays flat).

        Raises
        ------
        NotImplementedError
            Always; call the view's ``apply``/``map`` again instead.
        """
        raise NotImplementedError("resubmit needs the Hub's stored copy of each request; ipyparallel_ext has no"
                                  " Hub and drops payloads once sent: call view.apply(...) / view.map(...) again")


def _purge_arguments(jobs, targets) -> tuple:
    """Whether ``jobs`` and ``targets`` name anything (0 does: a history index, an engine id)."""
    given = tuple(x is not None and not (isinstance(x, Sized) and len(x) == 0) for x in (jobs, targets))
    if not any(given):
        raise ValueError("say what to purge: jobs=... (or 'all') and/or targets=...")
    return given


_QUERY_OPERATORS = {
    "$lt": lambda value, arg: value is not None and value < arg,
    "$lte": lambda value, arg: value is not None and value <= arg,
    "$gt": lambda value, arg: value is not None and value > arg,
    "$gte": lambda value, arg: value is not None and value >= arg,
    "$eq": lambda value, arg: value == arg,
    "$ne": lambda value, arg: value != arg,
    "$in": lambda value, arg: value in arg,
    "$nin": lambda value, arg: value not in arg,
    "$exists": lambda value, arg: (value is not None) == bool(arg),
}


def _query_test(key, condition):
    """A predicate on one record value, from a db_query condition (a value or operators)."""
    if not isinstance(condition, dict):
        return lambda value: value == condition
    unknown = sorted(set(condition) - set(_QUERY_OPERATORS))
    if unknown:
        raise ValueError(f"db_query: unknown operator {unknown[0]!r} for {key!r}"
                         f" (known: {' '.join(_QUERY_OPERATORS)})")
    ops = [(_QUERY_OPERATORS[op], arg) for op, arg in condition.items()]
    return lambda value: all(op(value, arg) for op, arg in ops)
