"""PyInstaller runtime hook: point model lookup at the bundled ``models/`` folder.

``cellview.model.models_dir()`` already finds ``<package parent>/models``, which inside a
one-folder bundle is ``sys._MEIPASS/models``; setting the variable makes that explicit and
survives a future change of the package layout. A user's own $CELLVIEW_MODELS_DIR wins.
"""

import os
import sys

_bundle = getattr(sys, "_MEIPASS", None)
if _bundle and not os.environ.get("CELLVIEW_MODELS_DIR"):
    _models = os.path.join(_bundle, "models")
    if os.path.isdir(_models):
        os.environ["CELLVIEW_MODELS_DIR"] = _models
