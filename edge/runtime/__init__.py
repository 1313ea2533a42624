"""The runtime core a device needs to turn a frame into decided cells: the bundle, the tiling, the cell
view, preprocessing, the backends, the engine, the decision, field quality and drift.

May import: the standard library, numpy, OpenCV, ONNX Runtime (TensorRT on Jetson), `calibration` and
edge.runtime itself; within it, edge.runtime.backends never imports the engine.
"""
