"""The viewer's state, Qt-free, in the spirit of napari's ``components``: ``ViewerModel`` is composed of
small parts with their own events (the open slide, the model and its options, the analysis run, the
overlay, the selection, the regions, the tissue preview, explanations, exports, the labelling state; one
module each, ``model.py`` composes and wires them), beside the plain events, the jobs a GUI worker runs,
and the settings store they share (``events.py``, ``jobs.py``, ``settings.py``). Imports the engine, the
outputs and the lab's tools; the windows in ``gui`` only render it and tests drive it without Qt.
``viewer.kiosk`` is the kiosk's own state (settings, watch folder, cases), shown by the same windows' parts.
"""
