"""The lab's tools: a lab's own labels (QuPath-compatible GeoJSON beside the slide, ``image,label``
CSVs, QuPath imports) and the adaptation that refits the model's head on them (``cellview adapt``),
NumPy only, with its cross-validated before / after check. Imports the engine and the outputs;
the viewer's labelling state (``viewer.labelling``) and the training stack build on it.
"""
