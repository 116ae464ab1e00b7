"""Shared by the benchmark scripts: repository paths and the on-demand full-size exports."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "models" / "onnx" / "full"  # full-size exports, never committed
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def ensure_full_model(name: str, exporter: str = "ts") -> Path:
    """models/onnx/full/<name>.<exporter>.onnx, exported with torch (models/export.py) if missing."""
    path = FULL / f"{name}.{exporter}.onnx"
    if not path.exists():
        print(f"exporting {path.name} (torch) ...", file=sys.stderr)
        subprocess.run([sys.executable, str(ROOT / "models" / "export.py"), name, "--full", "--exporter", exporter,
                        "--out", str(FULL), "--no-manifest"], check=True)
    return path
