"""Where endpoints come from: a file or flags (standalone) or a Kubernetes InferencePool."""
