"""Fixtures for the Python tests of Handover's generated bindings.

Run through scripts/ffi-python-test.sh (or `cargo test -p handover-ffi`), which generates the
bindings and sets HANDOVER_FFI_PYTHON_BINDINGS to the directory holding `handover_ffi.py` and the
library.
"""

import os
import pathlib
import queue
import subprocess
import sys
import threading

import pytest

BINDINGS = os.environ.get("HANDOVER_FFI_PYTHON_BINDINGS")
if not BINDINGS:
    raise RuntimeError("run these tests through scripts/ffi-python-test.sh")
sys.path.insert(0, BINDINGS)

# Fast Argon2id for tests only; production uses default_kdf_settings().
import handover_ffi as h  # noqa: E402

FAST_KDF = h.KdfSettings(memory_kib=64, iterations=1, parallelism=1)

RELAY_START_TIMEOUT = 30


def relay_binary():
    """The relay executable: $HANDOVER_RELAY_BIN, else one built in the target directory."""
    explicit = os.environ.get("HANDOVER_RELAY_BIN")
    if explicit:
        return pathlib.Path(explicit)
    lib_dir = os.environ.get("HANDOVER_FFI_LIB_DIR")
    target = pathlib.Path(os.environ.get("HANDOVER_TARGET_DIR", "target"))
    dirs = [pathlib.Path(lib_dir)] if lib_dir else []
    dirs += [target / "debug", target / "release"]
    for d in dirs:
        # relay-under-test is the same entry point, built by `cargo test --workspace`;
        # handover-relay by `cargo build`. Take the newer: the other may be stale.
        found = [d / name for name in ("handover-relay", "relay-under-test")
                 if (d / name).is_file()]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    return None


class RelayProcess:
    """A real relay process on loopback with a temporary data directory. `listen` fixes the
    address (to restart a relay where its clients expect it); `extra` are more relay flags."""

    def __init__(self, binary, data_dir, listen="127.0.0.1:0", extra=()):
        self.proc = subprocess.Popen(
            [str(binary), "--listen", listen, "--admin", "off",
             "--data-dir", str(data_dir), "--wal-mib", "2", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=None if os.environ.get("HANDOVER_TEST_LOG") else subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            text=True,
        )
        lines = queue.Queue()

        def read():
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        self.ready = None
        try:
            while True:
                line = lines.get(timeout=RELAY_START_TIMEOUT)
                if line is None:
                    break
                if line.startswith("handover-relay ready"):
                    self.ready = dict(
                        part.split("=", 1) for part in line.split()[2:] if "=" in part)
                    break
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"{binary} printed no ready line in {RELAY_START_TIMEOUT} s")
        if self.ready is None:
            code = self.proc.wait(timeout=5)
            if code == 0:
                # The placeholder binary of a workspace without the relay: nothing to test.
                self.stop()
                pytest.skip(f"{binary} is a placeholder (exited 0 without serving)")
            raise RuntimeError(f"{binary} exited with {code} before it was ready")
        self.address = self.ready["quic"]
        self.pin = self.ready["pin"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def relay_binary_or_skip():
    binary = relay_binary()
    if binary is None:
        pytest.skip("no relay binary in the target directory: build it with "
                    "`cargo build -p handover-relay` or set HANDOVER_RELAY_BIN")
    return binary


@pytest.fixture(scope="session")
def relay(tmp_path_factory):
    binary = relay_binary_or_skip()
    process = RelayProcess(binary, tmp_path_factory.mktemp("relay-data"))
    yield process
    process.stop()


@pytest.fixture
def profile_dir(tmp_path):
    return str(tmp_path / "profile")
