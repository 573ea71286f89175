"""Where the shared real data lives: $INT4ONNX_SHARED_DATA, else ../shared/data beside the project."""

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(os.environ.get("INT4ONNX_SHARED_DATA", ROOT.parent / "shared" / "data"))
MISSING = (f"shared data not found at {SHARED}: the demo and the tests read real models and text from it "
           f"(models/stories260K, models/tinygpt_char, corpora/); put the shared folder beside the project "
           f"(../shared/data) or set INT4ONNX_SHARED_DATA=/path/to/shared/data")


def require_shared() -> pathlib.Path:
    """SHARED, or exit with one line saying what is needed and how to point at it."""
    if not SHARED.is_dir():
        sys.exit(f"int4onnx: {MISSING}")
    return SHARED


if __name__ == "__main__":  # `make demo` and `make test` check this before the long set-up
    require_shared()
