"""The ``ipyparallel-ext`` command line.

One sub-command per function, registered in :data:`COMMANDS`; adding one
(``start``, ``stop`` ...) means writing its ``add_arguments(parser)`` and
``run(args) -> int`` and listing them there.

``ipyparallel-ext install-kernelspecs [--user | --sys-prefix | --prefix P]``
installs the project's kernel specs (see ``kernelspec/`` in the repository):

- ``ipyparallel-ext-engine``: the engines' spec, stock ipykernel with
  :data:`~.cluster._local.ENGINE_ARGS` (what :class:`Cluster` uses by default);
- ``python3-parallel``, "Python 3 (parallel)": a notebook kernel that loads
  the ``%px`` magics at start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from .cluster._local import ENGINE_ARGS, ENGINE_KERNEL_NAME

PARALLEL_KERNEL_NAME = "python3-parallel"


def kernel_specs(python: str = "python") -> dict:
    """The project's kernel specs, as ``{name: kernel.json contents}``.

    Parameters
    ----------
    python : str
        ``argv[0]`` of each spec; ``"python"`` means "the Python that
        launches the kernel" to jupyter_client, an absolute path pins one.
    """
    return {
        ENGINE_KERNEL_NAME: {
            "argv": [python, *ENGINE_ARGS],
            "display_name": "ipyparallel_ext engine",
            "language": "python",
            "interrupt_mode": "signal",
            "metadata": {"debugger": False},
        },
        PARALLEL_KERNEL_NAME: {
            "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--IPKernelApp.extensions=ipyparallel_ext"],
            "display_name": "Python 3 (parallel)",
            "language": "python",
            "interrupt_mode": "signal",
            "metadata": {"debugger": True},
        },
    }


def install_kernelspecs(user: bool = False, prefix: str | None = None, python: str | None = None) -> dict:
    """Install :func:`kernel_specs` for this Python; returns ``{name: installed folder}``.

    With neither ``user`` nor ``prefix``, installs system-wide (Jupyter's rule).
    """
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager()
    installed = {}
    for name, spec in kernel_specs(python or sys.executable).items():
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "kernel.json"), "w") as f:
                json.dump(spec, f, indent=1)
            installed[name] = manager.install_kernel_spec(folder, name, user=user, prefix=prefix)
    return installed


# -- sub-commands -------------------------------------------------------------------------


def _install_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true",
                       help="install for the current user (the default)")
    where.add_argument("--sys-prefix", action="store_true",
                       help=f"install into this Python's prefix ({sys.prefix}): for virtualenvs and conda")
    where.add_argument("--prefix", metavar="PATH", help="install into PATH/share/jupyter/kernels")


def _install_run(args) -> int:
    prefix = sys.prefix if args.sys_prefix else args.prefix
    installed = install_kernelspecs(user=prefix is None, prefix=prefix)
    for name, folder in installed.items():
        print(f"installed kernelspec {name} in {folder}")
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", type=int, default=2, help="how many engines (default 2)")


def _demo_run(args) -> int:
    from ._demo import main as demo

    return demo(args.n)


# name -> (help, add_arguments(parser), run(args) -> exit status)
COMMANDS = {
    "demo": (
        "start local engines, run apply/map/push/pull/scatter/gather on them, print results and timings",
        _demo_arguments,
        _demo_run,
    ),
    "install-kernelspecs": (
        "install the engine kernelspec and the 'Python 3 (parallel)' notebook kernelspec",
        _install_arguments,
        _install_run,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipyparallel-ext", description="ipyparallel_ext tools")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(run=run)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``ipyparallel-ext`` command."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
