"""Named host-device synchronisations.

The training loops make no hidden host syncs; the few they need (actions sent to an emulator, the metrics of a log
window) sit inside ``allowed_sync()``, so that a run under ``torch.cuda.set_sync_debug_mode("error")`` fails on any
other one (``tests/test_cuda.py``).
"""
import contextlib

import torch


@contextlib.contextmanager
def allowed_sync():
    """Permit host syncs inside the block when sync debugging is on; a no-op on the CPU."""
    if not torch.cuda.is_available():
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)
