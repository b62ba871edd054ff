"""kubesky: the command line for people at the beamline (also `kubectl kubesky`)."""
