"""The layers import downwards only: credential code knows nothing of the proxy."""

import subprocess
import sys


def test_auth_does_not_import_the_proxy():
    code = (
        "import sys, mailproxy.auth.upstream, mailproxy.auth.file, mailproxy.auth.throttle;"
        "print(sorted(m for m in sys.modules if m.startswith('mailproxy.proxy')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
