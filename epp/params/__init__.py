"""Parameter types shared by the config file, plugin parameters and the command lines: strict
camelCase models, Go durations and Kubernetes quantities. Imports nothing else of ours."""
