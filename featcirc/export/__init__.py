"""Export: circuit files (JSON, GraphML, DOT, Neuronpedia) and drawings."""
