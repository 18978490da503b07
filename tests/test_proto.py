"""The generated gRPC modules match corral.proto (run `make proto` after editing it)."""

import subprocess
import sys


def test_generated_code_is_up_to_date() -> None:
    out = subprocess.run([sys.executable, "-m", "corral.rpc.generate", "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
