"""The daemon process: root task group, run manager, scheduler, batch lifecycle, recovery,
RPC methods, signals, sd_notify and the ``buildrunnerd`` command line.

Kept light: importing this package does not import the store, the agent or the RPC server;
:func:`run_daemon` does, when it starts.
"""

from buildrunnerd.daemon._app import DaemonOptions, run_daemon

__all__ = ["DaemonOptions", "run_daemon"]
