"""Engines a Cluster started build no log records that no handler emits (and lose none that one would)."""

import ipyparallel_ext as ipp


@ipp.interactive
def kernel_logging():
    """Runs on an engine: the kernel logger's level and its handlers' levels."""
    log = get_ipython().kernel.log  # noqa: F821 - the engine's
    return log.getEffectiveLevel(), [h.level for h in log.handlers]


@ipp.interactive
def set_log_level(level):
    """Runs on an engine: set the kernel application's log_level, as ``--log-level`` would."""
    get_ipython().kernel.parent.log_level = level  # noqa: F821 - the engine's
    return kernel_logging()  # noqa: F821 - pushed with it


def test_kernel_logger_level_follows_its_handlers(rc):
    e0 = rc[0]
    level, handler_levels = e0.apply_sync(kernel_logging)
    assert handler_levels and level == min(handler_levels) > 10  # debug calls build no records
    e0.push({"kernel_logging": kernel_logging}, block=True)
    try:
        # A user who asks the kernel for debug output gets it: the application reconfigures.
        level, handler_levels = e0.apply_sync(set_log_level, 10)
        assert level == 10 and min(handler_levels) == 10
    finally:
        e0.apply_sync(set_log_level, 30)
        e0.execute("__import__('_ipp_ext_engine')._adapter.skip_unused_log_records()", block=True)
    assert e0.apply_sync(kernel_logging)[0] == 30
