"""The public data sets composer uses: where they live on disk and how to fetch them.

    data_root()            # --data-dir, else $COMPOSER_DATA, else ../shared/data beside a source
                           # checkout, else the platformdirs user data folder
    pull(source, dest)     # fetch every file of the shipped manifest from a mirror, checked

The manifest (manifest.json, shipped in the package) lists every file with its size and sha256;
the data itself is never part of composer.
"""

from composer.data.manifest import Manifest, load_manifest
from composer.data.paths import data_root, resolution
from composer.data.pull import PullError, pull

__all__ = ["Manifest", "PullError", "data_root", "load_manifest", "pull", "resolution"]
