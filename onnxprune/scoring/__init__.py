"""Stage 3: channel importance (weight magnitudes, SP-LAMP, saliency, VBP) and calibration data."""
