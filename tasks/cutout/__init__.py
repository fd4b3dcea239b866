"""Background removal: u2netp through rembg's pre- and post-processing, on onnxruntime or OpenVINO."""
