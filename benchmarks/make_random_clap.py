"""Save a randomly initialised CLAP with the laion/clap-htsat-unfused architecture, for
benchmarks on machines that cannot download the real weights (same compute, no semantics).

    python benchmarks/make_random_clap.py /tmp/clap-random
    python benchmarks/ingest.py ../shared/data/tuxpaint/audio --modality audio --audio-model clap:/tmp/clap-random
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.tiny_clap import make_tiny_clap  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(make_tiny_clap(Path(sys.argv[1]), full_size=True))
