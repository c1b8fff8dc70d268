"""The lab's tools: a lab's own labels (``labels``: QuPath-compatible GeoJSON beside the slide,
``image,label`` CSVs, QuPath imports) and the adaptation that refits the model's head on them
(``cellview adapt``), NumPy only: ``labtiles`` reads the lab's tiles through the base model, ``head``
fits the head, ``check`` is the cross-validated before / after, ``modelfolder`` writes the adapted model
and its card, ``adapt`` runs them in order. Imports the engine and the outputs; the viewer's labelling
state (``viewer.labelling``) and the training stack build on it.
"""
