"""`python -m onnxprune ...` is the `onnxprune` command."""
import sys

from onnxprune.cli import main

sys.exit(main())
