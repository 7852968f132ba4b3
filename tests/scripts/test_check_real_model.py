"""scripts/check_real_model.py without the fetched files: one line naming the missing path."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_model_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "scripts/check_real_model.py", "--model", str(tmp_path / "none")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == (f"check_real_model: --model {tmp_path / 'none'}: no such file or folder "
                             "(bash scripts/fetch_real.sh fetches the defaults)\n")
