"""The gRPC inference server. It reads the model repository and never imports the trainer or tf2onnx;
TensorFlow is imported only by the TensorFlow backend."""
