"""The analysis engine, from a slide to tile results: tissue detection, the tile grid, the ONNX model
(model_spec: the sidecar validated on load and the precision copies; model_lookup: where a name is found;
classifier: providers TensorRT → CUDA → CPU), stain normalisation,
the pipeline that reads, classifies and measures nuclei on background threads and yields progress,
typed results and their cache, the slide call, out-of-domain scores and their statistics, malignant
regions and explanations. Imports ``base`` and ``slides`` only. A tile's probabilities are computed in
``classifier.OnnxClassifier.classify`` and gathered per slide by ``pipeline.analyze``.
"""
