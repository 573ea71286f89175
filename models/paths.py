"""Where the shared real data lives: $INT4ONNX_SHARED_DATA, else ../shared/data beside the project."""

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("INT4ONNX_SHARED_DATA", ROOT.parent / "shared" / "data"))
