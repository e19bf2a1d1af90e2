"""What ``execute()`` and ``%px`` give back per engine: :class:`ExecuteReply`, as in ipyparallel.

An ``execute`` request runs code as a cell; its result is not a pickled
value but what the kernel said and showed: the execution count (from the
``execute_reply``), stdout, displays and the ``Out[...]`` result (from
IOPub).  :class:`ExecuteRecord` makes that reply the record's value, so
``dv.execute("x", silent=False).get()`` is a list of ExecuteReply.
"""

from __future__ import annotations

from . import _display
from ._record import MessageRecord

# How long reading a reply's outputs waits for them to arrive after the reply.
OUTPUT_WAIT = _display.OUTPUT_WAIT

class ExecuteRecord(MessageRecord):
    """The record of one engine's ``execute`` request; its value is an :class:`ExecuteReply`.

    ``execution_count`` is set from the kernel's ``execute_reply`` by the
    engine connection.
    """

    __slots__ = ("execution_count",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.execution_count = None

    def value(self):
        if self.error is not None:
            return self.error
        return ExecuteReply(self)


class ExecuteReply:
    """One engine's reply to ``execute`` (or ``%px``): its count, outputs and result.

    Attributes and keys are the request's metadata (``reply.stdout``,
    ``reply["engine_id"]``, ``reply.outputs``, ``reply.execute_result``);
    ``reply.data`` is the ``Out[...]`` result's mime bundle, shown (with
    ``_repr_html_`` and friends) when the reply is displayed.
    """

    def __init__(self, record: ExecuteRecord):
        self._record = record
        self.msg_id = record.msg_id
        self.execution_count = record.execution_count

    @property
    def metadata(self) -> dict:
        """The request's metadata, once its outputs have arrived (or after a short wait)."""
        self._record.outputs_ready.wait(OUTPUT_WAIT)
        return self._record.metadata

    def _result(self) -> dict:
        return self.metadata["execute_result"] or {}

    @property
    def source(self) -> str:
        return self._result().get("source", "")

    @property
    def data(self) -> dict:
        """The mime bundle of the expression result (empty if the code had none)."""
        return self._result().get("data", {})

    def _plaintext(self) -> str:
        result = self._result()
        if not result.get("data", {}).get("text/plain"):
            return ""
        return _display.result_text(dict(result, execution_count=self.execution_count),
                                     self.metadata["engine_id"])

    def display(self) -> None:
        """Show the result here, as IPython shows a cell's output."""
        _display.publish(self.data, self._result().get("metadata") or {})

    def _repr_mime_(self, mime):
        data = self.data
        if mime not in data:
            return None
        md = self._result().get("metadata") or {}
        return (data[mime], md[mime]) if mime in md else data[mime]

    def _repr_mimebundle_(self, include=None, exclude=None):
        data = dict(self.data)
        if "text/plain" in data:
            data["text/plain"] = self._plaintext()
        return data, self._result().get("metadata") or {}

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(self._plaintext())

    # The rich representations IPython's RichOutput offers.
    def _repr_html_(self):
        return self._repr_mime_("text/html")

    def _repr_markdown_(self):
        return self._repr_mime_("text/markdown")

    def _repr_latex_(self):
        return self._repr_mime_("text/latex")

    def _repr_json_(self):
        return self._repr_mime_("application/json")

    def _repr_javascript_(self):
        return self._repr_mime_("application/javascript")

    def _repr_png_(self):
        return self._repr_mime_("image/png")

    def _repr_jpeg_(self):
        return self._repr_mime_("image/jpeg")

    def _repr_svg_(self):
        return self._repr_mime_("image/svg+xml")

    def __getattr__(self, key):
        if key.startswith("_"):
            raise AttributeError(key)
        metadata = self.metadata
        if key not in metadata:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")
        return metadata[key]

    def __getitem__(self, key):
        return self.metadata[key]

    def __repr__(self) -> str:
        text = self.data.get("text/plain", "")
        if len(text) > 32:
            text = text[:29] + "..."
        return f"<ExecuteReply[{self.execution_count}]: {text}>"

