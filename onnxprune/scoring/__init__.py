"""Stage 3: channel importance (weight magnitudes, SP-LAMP, saliency, VBP) and calibration data."""
from onnxprune.scoring import scorers  # noqa: F401  (importing the package registers every scorer)
