"""Installed in test subprocesses (DDP workers) through PYTHONPATH: records non-loopback connects."""

import os

if os.environ.get("LIGHTNING_REUSE_NETGUARD_LOG"):
    from tests.helpers.netguard_impl import install

    install(log_path=os.environ["LIGHTNING_REUSE_NETGUARD_LOG"])
