"""The README's Python example runs as printed (issue 12: it failed on ``~``), against a photo
folder in a fresh home, with the tiny test model named through the environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import CONFIG_DIR, REPO, flickr_images


def test_the_readme_python_example_runs(tmp_path: Path, clip_spec: str) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    assert 'Settings(catalog="~/.mmsearch")' in code and '"~/Photos"' in code
    home = tmp_path / "home"
    (home / "Photos").mkdir(parents=True)
    for src in flickr_images(40):
        shutil.copy2(src, home / "Photos" / src.name)
    env = {**os.environ, "HOME": str(home), "MMSEARCH_MODEL": clip_spec, "PYTHONPATH": str(REPO),
           "MMSEARCH_MODEL_CONFIG_DIRS": json.dumps([str(CONFIG_DIR)]), "MMSEARCH_AUDIO": "false",
           "MMSEARCH_DEVICE": "cpu"}
    env.pop("MMSEARCH_CATALOG", None)
    done = subprocess.run([sys.executable, "-c", code + "\nprint(report.added, len(hits), mat.shape)"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    added, n_hits, _ = done.stdout.split(maxsplit=2)
    assert int(added) == 40 and int(n_hits) == 5
    assert (home / ".mmsearch" / "catalog.db").is_file() and not (tmp_path / "~").exists()
    assert (tmp_path / "vectors.parquet").is_file()
