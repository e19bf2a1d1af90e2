"""The %px magics: run cells on the engines from IPython and notebooks.

``view.activate(suffix)`` binds ``%px``, ``%%px``, ``%autopx``, ``%pxresult``
and ``%pxconfig`` (each name + ``suffix``) to a DirectView; ``%load_ext
ipyparallel_ext`` registers them before any view exists, and the first
Client made inside IPython binds a blocking view on all engines.  Options and
output follow ipyparallel 9 (``[stdout:0]``, ``Out[0:3]:``, ``[output:0]``);
showing outputs is :mod:`._display`'s job.

A blocking ``%px`` waits in the cell's own thread, showing outputs as they
arrive.  Ctrl-C there interrupts the engines too (an ``interrupt_request``,
or the signal given with ``--signal-on-interrupt``), then waits briefly for
them to report and raises, so "run all" stops at that cell.
"""

from __future__ import annotations

import ast
import re
import signal
import sys
import time
import warnings
import weakref

from IPython.core import magic_arguments
from IPython.core.error import UsageError
from IPython.core.magic import Magics, no_var_expand

from . import _display
from .error import AlreadyDisplayedError, CompositeError, RemoteError

# Seconds to wait, after interrupting the engines, for them to report.
INTERRUPT_GRACE = 5.0
# How often, meanwhile, SIGINT is sent again to engines still busy: a kernel ignores SIGINT between
# requests, so an interrupt that lands before it has started ours is lost.
INTERRUPT_REPEAT = 0.5

NO_VIEW = (
    "no engines are bound to %px{suffix} yet: create a Client"
    " (e.g. rc = ipyparallel_ext.Cluster(n=4).start_and_connect_sync())"
    " or call view.activate({suffix_arg})"
)

# shell -> {suffix: ParallelMagics}; weak, so a discarded shell is not kept alive.
_registry: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# -- parsing option values, without eval ---------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_targets(text: str, ids):
    """The engines named by ``--targets`` text.

    Accepts ``all``, an int (``0``), a list or tuple of ints (``[0, 2]``,
    ``0,2``) and slices of ``ids`` (``::2``, ``1:``, ``[1:3]``).  The text is
    parsed as literals only; nothing in it is evaluated.

    Raises
    ------
    UsageError
        If the text is none of these.
    """
    text = text.strip()
    if text == "all":
        return "all"
    if ":" in text:
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        parts = [p.strip() for p in inner.split(":")]
        if len(parts) > 3 or not all(re.fullmatch(r"-?\d*", p) for p in parts):
            raise UsageError(f"--targets: {text!r} is not a slice like '::2' or '1:3'")
        start, stop, step = [int(p) if p else None for p in parts] + [None] * (3 - len(parts))
        if step == 0:
            raise UsageError("--targets: a slice step cannot be zero")
        return list(ids)[slice(start, stop, step)]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if _is_int(value):
        return value
    if isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
        return list(value)
    raise UsageError(f"--targets: {text!r} is not 'all', an engine id, a list of ids or a slice")


def parse_signal(text) -> int:
    """A signal number from ``SIGINT``, ``INT``, ``2``, ``SIGKILL``, ``0`` ...

    Raises
    ------
    UsageError
        For an unknown signal name.
    """
    text = str(text).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    name = text.upper() if text.upper().startswith("SIG") else "SIG" + text.upper()
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"--signal-on-interrupt: unknown signal {text!r}") from None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _describe(targets) -> str:
    if isinstance(targets, list) and len(targets) > 10:
        return f"[{', '.join(map(str, targets[:4]))}, ..., {', '.join(map(str, targets[-4:]))}]"
    return str(targets)


# -- options shared by several magics -----------------------------------------------------

_EXECUTION_OPTIONS = [
    magic_arguments.argument("-t", "--targets", type=str,
                             help="engines to run on: all, 3, [0,2], ::2 (default: the view's)"),
    magic_arguments.argument("-b", "--block", action="store_const", const=True, dest="block",
                             help="wait for the engines and show their outputs"),
    magic_arguments.argument("-a", "--noblock", action="store_const", const=False, dest="block",
                             help="return an AsyncResult at once (see %%pxresult)"),
    magic_arguments.argument("--stream", action="store_const", const=True, dest="stream",
                             help="show outputs live, as the engines produce them (blocking only)"),
    magic_arguments.argument("--no-stream", action="store_const", const=False, dest="stream",
                             help="show outputs when the engines are done"),
    magic_arguments.argument("--verbose", action="store_const", const=True, dest="verbose",
                             help="say where each cell runs"),
    magic_arguments.argument("--no-verbose", action="store_const", const=False, dest="verbose",
                             help="do not say where each cell runs"),
    magic_arguments.argument("--progress-after", dest="progress_after", type=float, default=None,
                             help="seconds before a progress bar appears (0: at once, -1: never)"),
    magic_arguments.argument("--signal-on-interrupt", dest="signal_on_interrupt", type=str, default=None,
                             help="signal sent to the engines on Ctrl-C: SIGINT (default), 9, SIGTERM,"
                                  " 0 (leave them running)"),
]

_OUTPUT_OPTIONS = [
    magic_arguments.argument("-r", action="store_const", dest="groupby", const="order",
                             help="same as --group-outputs=order"),
    magic_arguments.argument("-e", action="store_const", dest="groupby", const="engine",
                             help="same as --group-outputs=engine"),
    magic_arguments.argument("--group-outputs", dest="groupby", type=str, default="type",
                             choices=["engine", "order", "type"],
                             help="type: all stdout, then stderr, then displays; engine: one engine"
                                  " after the other; order: the i-th display of every engine together"),
    magic_arguments.argument("-o", "--out", dest="save_name", type=str,
                             help="store the AsyncResult in this variable"),
]


def _with(options):
    """Decorator adding a list of magic_arguments options to a magic."""
    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


# -- the magics ------------------------------------------------------------------------------


class ParallelMagics(Magics):
    """``%px``, ``%%px``, ``%autopx``, ``%pxresult``, ``%pxconfig`` for one view.

    Parameters
    ----------
    shell : InteractiveShell
    view : DirectView or None
        None until a view is bound (after ``%load_ext`` with no client yet).
    suffix : str
        Appended to every magic's name (``%px_even`` for ``'_even'``).
    """

    # The magic names carry the suffix, so the table is built per instance
    # rather than by IPython's class decorators.
    registered = True

    def __init__(self, shell, view, suffix=""):
        self.view = view
        self.suffix = suffix
        self.last_result = None
        self.verbose = False
        self.stream = not _display.noninteractive()
        self.progress_after = 2.0
        self.signal_on_interrupt = int(signal.SIGINT)
        self._autopx = None
        line = {
            "px" + suffix: self.px,
            "pxresult" + suffix: self.pxresult,
            "pxconfig" + suffix: self.pxconfig,
            "autopx" + suffix: self.autopx,
        }
        if not suffix:
            line["result"] = self.pxresult  # ipyparallel's older name
        self.magics = {"line": line, "cell": {"px" + suffix: self.cell_px}}
        super().__init__(shell=shell)

    def _view(self):
        if self.view is None:
            raise UsageError(NO_VIEW.format(suffix=self.suffix, suffix_arg=repr(self.suffix) if self.suffix else ""))
        return self.view

    # -- %px and %%px ---------------------------------------------------------------------

    @no_var_expand
    def px(self, line=""):
        """Run one line of code on the engines.

        ::

            In [1]: %px import os; pid = os.getpid()
            In [2]: %px print(pid)
            [stdout:0]
            4242
            [stdout:1]
            4243

        Blocks (and shows outputs) if the view does, else returns an
        AsyncResult; ``%pxconfig`` sets the defaults, ``%%px`` takes options.
        """
        return self.parallel_execute(line)

    @magic_arguments.magic_arguments(name="px")
    @_with(_EXECUTION_OPTIONS)
    @_with(_OUTPUT_OPTIONS)
    @magic_arguments.argument("--local", action="store_true", help="also run the cell here")
    def cell_px(self, line="", cell=None):
        """Run the cell on the engines.

        ::

            In [3]: %%px --targets ::2 --noblock
               ...: train_step()
            Out[3]: <AsyncResult(execute): pending>
        """
        args = magic_arguments.parse_argstring(self.cell_px, line)
        args.groupby = args.groupby or "type"  # -r/-e share its dest, and their default wins
        view = self._view()
        targets = parse_targets(args.targets, view.client.ids) if args.targets else None
        signum = parse_signal(args.signal_on_interrupt) if args.signal_on_interrupt else None
        return self.parallel_execute(
            cell, targets=targets, block=args.block, groupby=args.groupby, save_name=args.save_name,
            stream=args.stream, progress_after=args.progress_after, signal_on_interrupt=signum,
            verbose=args.verbose, local=args.local,
        )

    def parallel_execute(self, cell, targets=None, block=None, groupby="type", save_name=None,
                         stream=None, progress_after=None, signal_on_interrupt=None, verbose=None,
                         local=False):
        """Run ``cell`` on the engines (what ``%px`` and ``%%px`` do).

        Returns
        -------
        AsyncResult or None
            The AsyncResult when not blocking; None after a blocking run.
        """
        view = self._view()
        block = view.block if block is None else block
        stream = self.stream if stream is None else stream
        progress_after = self.progress_after if progress_after is None else progress_after
        signum = self.signal_on_interrupt if signal_on_interrupt is None else signal_on_interrupt
        if self.verbose if verbose is None else verbose:
            where = _describe(view.targets if targets is None else targets)
            print(f"{'Parallel' if block else 'Async parallel'} execution on engine(s): {where}")

        ar = view.execute(cell, silent=False, targets=targets, block=False)
        ar._fname = "%px"  # its name in reprs and errors, as in ipyparallel
        self.last_result = ar
        if save_name:
            self.shell.user_ns[save_name] = ar
        if not block:
            if local:
                self.shell.run_cell(cell)
            return ar
        live = None
        try:
            try:  # from here on, Ctrl-C interrupts the engines too
                if stream:
                    live = _display.LiveOutput(ar, view.client)
                if local:
                    self.shell.run_cell(cell)
                if live is not None:
                    live.wait(progress_after, "%px")
                else:
                    _display.wait_with_progress(ar, progress_after, "%px")
            except KeyboardInterrupt:
                self._interrupt_engines(ar, live, signum)
            self._raise_remote_errors(ar, live)
        finally:
            if live is not None:
                live.close()
            elif ar.done():
                ar.display_outputs(groupby)
            else:  # interrupted, engines still busy (display_outputs needs a result): what came so far
                _display.display_outputs(ar, groupby)
        return None

    def _interrupt_engines(self, ar, live, signum) -> None:
        """After Ctrl-C: signal the busy engines, wait for them to report, and raise."""
        busy = _display.busy_engines(ar)
        if not signum or not busy:
            raise KeyboardInterrupt
        client = self._view().client
        print(f"Keyboard interrupt: sending {_signal_name(signum)} to engine(s) {busy}", file=sys.stderr)
        deadline = time.monotonic() + INTERRUPT_GRACE
        done = False
        try:
            while busy and not done:
                try:
                    if signum == signal.SIGINT:
                        client.interrupt(busy)  # interrupt_request: works for any kernel, even not ours
                    else:
                        client.send_signal(signum, busy)
                except Exception as exc:  # e.g. the engine died meanwhile: say so, stop waiting
                    print(f"could not signal engine(s) {busy}: {exc}", file=sys.stderr)
                    raise KeyboardInterrupt from None
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # Only SIGINT is sent again; other signals are sent once.
                step = min(left, INTERRUPT_REPEAT) if signum == signal.SIGINT else left
                done = live.wait(-1, timeout=step) if live is not None else ar.wait(step)
                busy = _display.busy_engines(ar) if signum == signal.SIGINT else []
            if not done and time.monotonic() < deadline:
                left = deadline - time.monotonic()
                done = live.wait(-1, timeout=left) if live is not None else ar.wait(left)
        except KeyboardInterrupt:
            done = False
        if not done:
            print(f"engine(s) still busy after {INTERRUPT_GRACE:g} s; %pxresult shows their outputs"
                  " when they finish", file=sys.stderr)
        if not done or ar.successful():
            raise KeyboardInterrupt
        # Done, with the engines' own KeyboardInterrupt errors: raise those.

    @staticmethod
    def _raise_remote_errors(ar, live) -> None:
        try:
            ar.get()
        except RemoteError as exc:
            if live is not None and live.all_errors_shown():
                # Each engine's traceback is on screen already: just fail the cell.
                if not isinstance(exc, CompositeError):
                    exc = CompositeError("%px", [(exc.ename, exc.evalue, exc.traceback, exc.engine_info)])
                raise AlreadyDisplayedError(exc) from None
            raise

    # -- %pxresult ---------------------------------------------------------------------------

    @magic_arguments.magic_arguments(name="pxresult")
    @_with(_OUTPUT_OPTIONS)
    def pxresult(self, line=""):
        """Show the outputs of the last ``%px`` (e.g. one run with ``--noblock``).

        ::

            In [4]: %pxresult
            Out[0:4]: 4242
            Out[1:4]: 4243

        Raises the engines' errors after showing the outputs.
        """
        args = magic_arguments.parse_argstring(self.pxresult, line)
        ar = self.last_result
        if ar is None:
            raise UsageError(f"%pxresult{self.suffix}: no %px{self.suffix} has run yet")
        if args.save_name:
            self.shell.user_ns[args.save_name] = ar
            return
        _display.wait_with_progress(ar, self.progress_after, "%pxresult")
        ar.display_outputs(groupby=args.groupby or "type")
        ar.get()

    # -- %pxconfig ----------------------------------------------------------------------------

    @magic_arguments.magic_arguments(name="pxconfig")
    @_with(_EXECUTION_OPTIONS)
    def pxconfig(self, line=""):
        """Set the defaults of ``%px``/``%%px``: targets, blocking, streaming, progress, signal.

        ``%pxconfig`` alone prints the current settings.
        """
        args = magic_arguments.parse_argstring(self.pxconfig, line)
        view = self._view()
        if args.targets:
            view.targets = parse_targets(args.targets, view.client.ids)
        if args.block is not None:
            view.block = args.block
        if args.verbose is not None:
            self.verbose = args.verbose
        if args.stream is not None:
            self.stream = args.stream
        if args.progress_after is not None:
            self.progress_after = args.progress_after
        if args.signal_on_interrupt is not None:
            self.signal_on_interrupt = parse_signal(args.signal_on_interrupt)
        if not line.strip():
            print(f"targets={view.targets!r} block={view.block} stream={self.stream}"
                  f" progress_after={self.progress_after:g} verbose={self.verbose}"
                  f" signal_on_interrupt={_signal_name(self.signal_on_interrupt)}")

    # -- %autopx ------------------------------------------------------------------------------

    def autopx(self, line=""):
        """Toggle running every cell on the engines instead of here.

        ::

            In [5]: %autopx
            %autopx enabled: cells run on engine(s) all
            In [6]: a = 10
            In [7]: %autopx
            %autopx disabled
        """
        if self._autopx is not None:
            self._autopx.off()
            self._autopx = None
            print("%autopx disabled")
            return
        view = self._view()
        self._autopx = _AutoPx(self.shell, self.suffix)
        self._autopx.on()
        print(f"%autopx enabled: cells run on engine(s) {_describe(view.targets)}")

    def retire(self) -> None:
        """Called when another view takes over these magic names."""
        if self._autopx is not None:
            self._autopx.off()
            self._autopx = None


class _AutoPx:
    """IPython input transformers that turn every cell into ``%%px`` + cell.

    Working at the transformer level (not by replacing ``run_cell``) covers
    every way IPython runs a cell: the terminal, ``run_cell`` and ipykernel's
    ``run_cell_async``.  The first transformer only remembers the cell as
    typed (cleaned of prompts); the last replaces the compiled code with a
    call of the cell magic on that text.  A cell starting with ``%autopx``
    runs here, to switch the mode off.
    """

    def __init__(self, shell, suffix):
        self.shell = shell
        self.magic_name = "px" + suffix
        self._toggle = re.compile(rf"\s*%autopx{re.escape(suffix)}(?!\w)")
        self._cell = None

        def remember(lines):
            self._cell = "".join(lines)
            return lines

        remember.has_side_effects = True  # IPython then skips it when only checking completeness
        self._remember = remember

    def _route(self, lines):
        cell, self._cell = self._cell, None
        if cell is None or self._toggle.match(cell):
            return lines
        # 'pass' last: the call is a statement, so IPython displays no Out[] for it.
        return [f"get_ipython().run_cell_magic({self.magic_name!r}, '', {cell!r})\n", "pass\n"]

    def on(self) -> None:
        self.shell.input_transformers_cleanup.append(self._remember)
        self.shell.input_transformers_post.append(self._route)

    def off(self) -> None:
        for transforms, fn in ((self.shell.input_transformers_cleanup, self._remember),
                               (self.shell.input_transformers_post, self._route)):
            if fn in transforms:
                transforms.remove(fn)


# -- registration -------------------------------------------------------------------------------


def _register(shell, view, suffix: str) -> ParallelMagics:
    table = _registry.setdefault(shell, {})
    old = table.get(suffix)
    if old is not None:
        old.retire()
    magics = ParallelMagics(shell, view, suffix)
    shell.magics_manager.register(magics)
    table[suffix] = magics
    return magics


def activate(view, suffix: str = ""):
    """Bind the %px magics (names + ``suffix``) to ``view`` in the running IPython.

    Returns the :class:`ParallelMagics`, or None outside IPython (with a warning).
    """
    shell = _display._ipython()
    if shell is None:
        warnings.warn("the %px magics need IPython; activate() does nothing outside it", UserWarning,
                      stacklevel=3)
        return None
    return _register(shell, view, suffix)


def activate_first_client(client) -> None:
    """Inside IPython, give ``%px`` a blocking all-engines view of ``client`` if it has none yet."""
    shell = _display._ipython()
    if shell is None:
        return
    current = _registry.get(shell, {}).get("")
    if current is None and "px" in shell.magics_manager.magics["line"]:
        return  # someone else's %px (ipyparallel's?): leave it alone
    if current is None or current.view is None:
        client.activate()


def load_ipython_extension(ip) -> None:
    """``%load_ext ipyparallel_ext``: register the magics (bound to no view until a Client exists)."""
    if "" not in _registry.get(ip, {}):
        _register(ip, None, "")
