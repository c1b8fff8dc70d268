"""Tools for tests and benchmarks, shipped so that bench scripts and users' tests can use them like
``numpy.testing``: synthetic slides and images in every container, small ONNX models with sidecars
and domain statistics, and the reader fuzzer. The top layer: it may import anything, nothing in
CellView imports it.
"""
