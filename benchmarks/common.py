"""Shared by the benchmark scripts: repository paths and the on-demand full-size exports."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "models" / "onnx" / "full"  # full-size exports, never committed
TRAINED = ROOT / "models" / "trained"  # trained digits models (+ their eval split helpers)
TRAINED_MODELS = ("resnet", "mobilenetv2", "convnext", "vit")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(TRAINED) not in sys.path:  # last: its vision/text/train modules never shadow another script's imports
    sys.path.append(str(TRAINED))


def trained_models_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of a benchmark over the trained digits models, with ``--models``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(TRAINED_MODELS))
    return ap


def ensure_full_model(name: str, exporter: str = "ts") -> Path:
    """models/onnx/full/<name>.<exporter>.onnx, exported with torch (models/export.py) if missing."""
    path = FULL / f"{name}.{exporter}.onnx"
    if not path.exists():
        print(f"exporting {path.name} (torch) ...", file=sys.stderr)
        subprocess.run([sys.executable, str(ROOT / "models" / "export.py"), name, "--full", "--exporter", exporter,
                        "--out", str(FULL), "--no-manifest"], check=True)
    return path


def load_avg() -> list[float]:
    """The machine's 1/5/15-minute load averages: every timing figure is recorded with them (the
    dev machine has 2 cores shared with other jobs; a load above 2 slows and scatters timings)."""
    import os
    return [round(x, 2) for x in os.getloadavg()]


def read_results(path: Path, list_key: str) -> list[dict]:
    """Entries already in a results file (``list_key``'s list), for resuming a run; [] if none."""
    import json
    try:
        return list(json.loads(path.read_text()).get(list_key, []))
    except (OSError, ValueError, AttributeError):
        return []
