"""The lab's tools, Qt-free and NumPy only: a lab's own labels and the adaptation that refits the model's head on them.

- ``labels``: labelled regions, QuPath-compatible GeoJSON beside the slide (QuPath 0.2 / 0.3 / 0.4+ exports,
  ``.geojson.gz``), ``image,label`` CSVs, where labels live, what an import labels (``summarise_import``);
- ``classmap``: QuPath classes the model does not know, mapped once and remembered; ``history``: undo / redo;
- ``suggest``: what to label next (``cellview suggest``);
- ``cellview adapt``: ``plan`` (the labels and the warnings before the run), ``labtiles`` (the lab's tiles
  through the base model), ``head`` (the refit), ``check`` and ``decision`` (the cross-validated before /
  after and its verdict: better, not distinguishable or worse), ``modelfolder`` (the adapted model and its
  card), ``adapt`` (the run).

Imports the engine and the outputs; the viewer's labelling state (``viewer.labelling``) and the training
stack build on it.
"""
